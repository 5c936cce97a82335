"""On CUDA: the binary-gate backward makes no host round trip, and gives the CPU's gradients.

Every test here needs a CUDA device and is skipped, with its reason, without one
(scripts/gpu_check.sh runs them on a GPU). The check uses torch's sync debug mode: in mode
'error', any operation that makes the host wait for the device (``.item()``, a copy to or from
pageable host memory, ``nonzero``, a stream synchronize) raises. The draw in ``resample`` reads
its index back to the host on purpose (one read per layer per step) and stays outside the check;
the forward does too: only the backward hook is checked.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import pytest
import torch
import torch.nn as nn

from conftest import Pair, requires_cuda
from proxyless_rs import ProxylessMixedInput, ProxylessMixedLayer

pytestmark = requires_cuda


@contextlib.contextmanager
def sync_debug_mode(mode: str):
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def test_the_check_catches_a_host_round_trip():
    x = torch.ones(3, device='cuda')
    with sync_debug_mode('error'), pytest.raises(RuntimeError, match='synchroniz'):
        x.sum().item()
    with sync_debug_mode('error'), pytest.raises(RuntimeError, match='synchroniz'):
        x + torch.ones(3).to('cuda')  # a copy from pageable host memory waits too


class Named(Pair):
    def forward(self, x):
        a, b = super().forward(x)
        return {'mean': a, 'scale': b}


def layer_of(kind: str, mode: str, dim: int) -> nn.Module:
    n = 5
    if kind == 'tensor':
        paths = [(f'c{k}', nn.Sequential(nn.Linear(dim, dim), nn.Tanh() if k % 2 else nn.ReLU())) for k in range(n)]
    elif kind == 'tuple':
        paths = [(f'c{k}', Pair(dim, 1.0 if k % 2 else -1.0)) for k in range(n)]
    else:
        paths = [(f'c{k}', Named(dim, 1.0 if k % 2 else -1.0)) for k in range(n)]
    return ProxylessMixedLayer(paths, nn.Parameter(torch.randn(n)), nn.Softmax(-1), 'op', mode=mode)


def loss_of(output) -> torch.Tensor:
    if isinstance(output, dict):
        output = tuple(output.values())
    if isinstance(output, tuple):
        return sum((t * (k + 1)).square().mean() for k, t in enumerate(output))
    return output.square().mean()


def one_step(build: Callable[[], nn.Module], inputs: Callable[[], object], device: str, seed: int, memo: dict):
    """resample (``memo`` fixes the path: the same on both devices; ``{}`` draws) and forward, not
    checked; then the backward under sync debug mode 'error' on CUDA. Returns the alpha gradient."""
    torch.manual_seed(0)
    module = build().double().to(device)
    torch.manual_seed(seed)
    x = inputs()  # on the host: the same numbers for both devices
    # A mixed input's output requires grad only through its inputs.
    x = [t.to(device).requires_grad_() for t in x] if isinstance(x, list) else x.to(device)
    module.resample(memo)
    loss = loss_of(module(x))
    check = sync_debug_mode('error') if device == 'cuda' else contextlib.nullcontext()
    if device == 'cuda':
        torch.cuda.synchronize()
    with check:
        loss.backward()
    if device == 'cuda':
        torch.cuda.synchronize()
    alpha = module._arch_alpha
    assert alpha.grad is not None and alpha.grad.device.type == device
    assert len(module.ctx) == 0  # the hook ran and consumed its saved forward
    return alpha.grad.cpu()


@pytest.mark.parametrize('mode', ['full', 'two'])
@pytest.mark.parametrize('kind', ['tensor', 'tuple', 'dict'])
@pytest.mark.parametrize('rows, dim', [(4, 8), (64, 600)], ids=['small', 'large'])
def test_layer_backward_makes_no_host_round_trip(kind, mode, rows, dim):
    def inputs():
        return torch.randn(rows, dim, dtype=torch.float64)

    def build():
        return layer_of(kind, mode, dim)

    for seed in range(3):
        # Full mode: the path fixed, so that both devices compute the same gradient. Two-path mode
        # draws (a memo would fall back to full mode), from each device's own generator.
        memo = {'op': f'c{seed}'} if mode == 'full' else {}
        on_gpu = one_step(build, inputs, 'cuda', seed, memo)
        on_cpu = one_step(build, inputs, 'cpu', seed, memo)
        assert on_gpu.abs().sum() > 0
        if mode == 'full':
            torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('mode', ['full', 'two'])
def test_mixed_input_backward_makes_no_host_round_trip(mode):
    def inputs():
        return [torch.randn(4, 8, dtype=torch.float64) for _ in range(4)]

    def build():
        return ProxylessMixedInput(4, 1, nn.Parameter(torch.randn(4)), nn.Softmax(-1), 'pick', mode=mode)

    for seed in range(3):
        memo = {'pick': seed} if mode == 'full' else {}
        on_gpu = one_step(build, inputs, 'cuda', seed, memo)
        on_cpu = one_step(build, inputs, 'cpu', seed, memo)
        assert on_gpu.abs().sum() > 0
        if mode == 'full':
            torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-9, atol=1e-12)


def test_a_search_on_cuda_moves_the_alphas_like_on_the_cpu():
    """Twenty architecture steps of the regression supernet (every situation of tests/conftest.py:
    shared labels, kwargs, tuple outputs, a mixed input) on both devices, the draws of the CPU run
    replayed on CUDA, eval mode (no dropout masks, which differ per device): the same alphas."""
    from conftest import build as build_supernet, resample_in_order

    results = {}
    draws: list[dict] = []
    for device, replay in (('cpu', False), ('cuda', True)):
        net = build_supernet('rs', dtype=torch.float64).to(device).eval()
        alphas = list({id(m._arch_alpha): m._arch_alpha for m in net.mixed()}.values())  # two layers share one
        opt = torch.optim.Adam(alphas, lr=0.05)
        for step in range(20):
            torch.manual_seed(step)
            x = torch.randn(5, 8, dtype=torch.float64).to(device)
            memo = resample_in_order(net.mixed(), draws[step] if replay else None)
            if not replay:
                draws.append(memo)
            opt.zero_grad()
            loss = net(x).square().mean()
            with sync_debug_mode('error') if device == 'cuda' else contextlib.nullcontext():
                loss.backward()
            opt.step()
        results[replay] = [a.detach().cpu() for a in alphas]
    assert len({tuple(sorted(d.items())) for d in draws}) > 1  # several architectures were trained
    for ours, reference in zip(results[True], results[False]):
        torch.testing.assert_close(ours, reference, rtol=1e-7, atol=1e-9)
