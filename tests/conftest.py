"""Shared helpers: one supernet built twice, with NNI 2.10's classes and with ours.

Each test builds the same network under the same seed with both implementations, runs the
same steps under the same seeds, and compares what each step produced. The suite runs under
NNI 2.10 and under NNI 3.0 (one environment each): tests of our layers alone run under both;
comparisons with NNI 2.10's classes and workflow are skipped under NNI 3.0, with that reason, and
tests/test_nni3.py compares with NNI 3.0's classes and strategy there.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from nni.nas.oneshot.pytorch.supermodule.differentiable import GumbelSoftmax
from nni.nas.oneshot.pytorch.supermodule.proxyless import (
    ProxylessMixedInput as NNIMixedInput,
    ProxylessMixedLayer as NNIMixedLayer,
)

import proxyless_rs
from proxyless_rs.nni.version import NNI3

# The running torch's (major, minor), for the few checks that differ by release.
TORCH_RELEASE = tuple(int(v) for v in torch.__version__.split('+')[0].split('.')[:2])


# FLOP counting needs torch.utils.flop_counter (torch 2.1 on).
requires_flop_counter = pytest.mark.skipif(TORCH_RELEASE < (2, 1), reason='torch 2.0 has no torch.utils.flop_counter')

if NNI3:
    # NNI 3.0's supermodules outside a ModelSpace, as NNI 3.0's own unit tests build them.
    import nni.mutable.frozen

    nni.mutable.frozen._ENSURE_FROZEN_STRICT = False

requires_nni2 = pytest.mark.skipif(NNI3, reason="compares with NNI 2.10's classes or workflow; under NNI 3.0, "
                                                "tests/test_nni3.py compares with NNI 3.0's")
requires_nni3 = pytest.mark.skipif(not NNI3, reason='NNI 3.0 workflow; runs in the NNI 3.0 environment '
                                                    '(make test-nni3)')


def skip_module_unless_nni2() -> None:
    """At the top of a test module that imports NNI 2.10's workflow (nni.retiarii) at import time."""
    if NNI3:
        pytest.skip("NNI 2.10 workflow (nni.retiarii); under NNI 3.0, tests/test_nni3.py covers NNI 3.0's",
                    allow_module_level=True)

# Devices for the tests that matter on an accelerator: 'cuda' runs where CUDA is available and
# is skipped, with its reason, where it is not (scripts/gpu_check.sh runs them on a GPU).
CUDA_AVAILABLE = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA_AVAILABLE, reason='CUDA not available')
DEVICES = [pytest.param('cpu', id='cpu'), pytest.param('cuda', id='cuda', marks=requires_cuda)]

IMPLEMENTATIONS = {
    'nni': (NNIMixedLayer, NNIMixedInput),
    'rs': (proxyless_rs.ProxylessMixedLayer, proxyless_rs.ProxylessMixedInput),
}

SOFTMAXES: dict[str, Callable[[], nn.Module]] = {
    'softmax': lambda: nn.Softmax(-1),
    'gumbel': GumbelSoftmax,
}

# The closed-form alpha gradient p_i (b_i - <b, p>) rounds differently from NNI's n^2 loop of
# float32 ops (and the binary gates of small host outputs are summed in float64, where NNI sums
# in the outputs' dtype). Entries that are near zero by cancellation carry an absolute rounding error of a
# few ulps of the b_j p_j terms (~1e-9 at these scales), which no purely relative bound holds:
# hence rtol 1e-5 plus a tiny atol. In float64 both agree to 1e-12.
ALPHA_TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-8), torch.float64: dict(rtol=1e-12, atol=1e-15)}


def assert_alpha_close(ours: torch.Tensor | None, theirs: torch.Tensor | None, dtype=torch.float32) -> None:
    assert (ours is None) == (theirs is None), (ours, theirs)
    if ours is not None:
        torch.testing.assert_close(ours, theirs, **ALPHA_TOLERANCE[dtype])


def resample_in_order(modules, memo: dict | None = None) -> dict:
    """Resamples the mixed modules one after another, handing each the memo so far (NNI's one-shot
    loop): modules that share a label take the first one's draw."""
    memo = dict(memo or {})
    for module in modules:
        memo.update(module.resample(memo))
    return memo


class Scaled(nn.Module):
    """A candidate taking positional, optional and keyword arguments."""

    def __init__(self, dim: int, act: nn.Module | None = None):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.act = act or nn.Identity()

    def forward(self, x, bias=None, *, scale=1.0):
        y = self.act(self.linear(x)) * scale
        return y if bias is None else y + bias


class Pair(nn.Module):
    """A candidate returning a tuple of tensors."""

    def __init__(self, dim: int, sign: float):
        super().__init__()
        self.a = nn.Linear(dim, dim)
        self.b = nn.Linear(dim, dim)
        self.sign = sign

    def forward(self, x):
        return self.a(x), torch.tanh(self.b(x)) * self.sign


def candidates(dim: int) -> list[tuple[str, nn.Module]]:
    """Three candidates; one has dropout, so the hook's forwards consume random numbers."""
    return [
        ('linear', Scaled(dim)),
        ('tanh', Scaled(dim, nn.Tanh())),
        ('dropout', Scaled(dim, nn.Sequential(nn.Dropout(0.3), nn.ReLU()))),
    ]


class SuperNet(nn.Module):
    """Mixed layers in the situations the regression must cover.

    - ``first`` sees an input that does not require grad, and is called twice per forward;
    - ``second`` and ``third`` share one label and one alpha; ``third`` gets kwargs and a None arg;
    - ``pair`` has candidates returning tuples;
    - ``pick`` is a mixed input over three tensors.
    """

    def __init__(self, impl: str, softmax: Callable[[], nn.Module], dim: int = 8, classes: int = 4):
        super().__init__()
        layer_cls, input_cls = IMPLEMENTATIONS[impl]
        alpha = lambda n: nn.Parameter(torch.randn(n))  # noqa: E731
        shared = alpha(3)
        self.first = layer_cls(candidates(dim), alpha(3), softmax(), 'first')
        self.second = layer_cls(candidates(dim), shared, softmax(), 'shared')
        self.third = layer_cls(candidates(dim), shared, softmax(), 'shared')
        self.pair = layer_cls([('plus', Pair(dim, 1.0)), ('minus', Pair(dim, -1.0))], alpha(2), softmax(), 'pair')
        self.pick = input_cls(3, 1, alpha(3), softmax(), 'pick')
        self.head = nn.Linear(dim, classes)

    def mixed(self):
        return [self.first, self.second, self.third, self.pair, self.pick]

    def resample(self, memo: dict | None = None) -> dict:
        return resample_in_order(self.mixed(), memo)

    def forward(self, x):
        a = self.first(self.first(x))
        b = self.second(a, None)
        c = self.third(b, bias=a, scale=0.5)
        p, q = self.pair(c)
        d = self.pick([a, p, q])
        return self.head(d + b)


def build(impl: str, softmax: str = 'softmax', dtype=torch.float32, seed: int = 0, **kwargs) -> SuperNet:
    if impl == 'nni' and NNI3:
        pytest.skip("compares with NNI 2.10's classes (this SuperNet uses keyword arguments, which NNI 3.0's refuse); "
                    "tests/test_nni3.py compares with NNI 3.0's")
    torch.manual_seed(seed)
    return SuperNet(impl, SOFTMAXES[softmax], **kwargs).to(dtype)


def arch_parameters(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in net.named_parameters() if name.endswith('_arch_alpha')}


def weight_parameters(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in net.named_parameters() if not name.endswith('_arch_alpha')}


@dataclasses.dataclass
class StepResult:
    sample: dict
    output: torch.Tensor
    weight_grads: dict[str, torch.Tensor | None]
    alpha_grads: dict[str, torch.Tensor | None]


def train_step(net: SuperNet, seed: int, extra_alpha_loss: bool = False, lr: float = 0.1,
               memo: dict | None = None) -> StepResult:
    """One ProxylessNAS step: resample, forward, backward, SGD on weights and alphas (on the net's
    device; the batch is drawn on the host, so it is the same on every device)."""
    dtype = net.head.weight.dtype
    device = net.head.weight.device
    torch.manual_seed(seed)
    sample = net.resample(memo)
    x = torch.randn(5, 8, dtype=dtype).to(device)
    y = torch.randint(0, 4, (5,)).to(device)
    net.zero_grad(set_to_none=True)
    output = net(x)
    loss = F.cross_entropy(output, y)
    if extra_alpha_loss:
        # A latency-like loss: gradients through autograd must add to the hook's.
        for i, module in enumerate(net.mixed()):
            cost = torch.arange(1, len(module._arch_alpha) + 1, dtype=dtype, device=device)
            loss = loss + 0.01 * (i + 1) * (module._softmax(module._arch_alpha) * cost).sum()
    loss.backward()
    result = StepResult(
        sample=sample,
        output=output.detach().clone(),
        weight_grads={k: None if p.grad is None else p.grad.clone() for k, p in weight_parameters(net).items()},
        alpha_grads={k: None if p.grad is None else p.grad.clone() for k, p in arch_parameters(net).items()},
    )
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return result


def assert_steps_equal(ours: StepResult, theirs: StepResult, dtype=torch.float32) -> None:
    assert ours.sample == theirs.sample
    torch.testing.assert_close(ours.output, theirs.output, rtol=0, atol=0)
    assert ours.weight_grads.keys() == theirs.weight_grads.keys()
    for name in theirs.weight_grads:
        a, b = ours.weight_grads[name], theirs.weight_grads[name]
        if a is None and b is not None and TORCH_RELEASE < (2, 1):
            # torch 2.0's module full backward hook (NNI's layers register one) materializes a zero
            # gradient for a layer output that gets none, so a candidate whose output does not reach
            # the loss gets zero weight gradients there; ours, as NNI's from torch 2.1 on, gets None.
            assert torch.count_nonzero(b) == 0, name
            continue
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert ours.alpha_grads.keys() == theirs.alpha_grads.keys()
    for name in theirs.alpha_grads:
        assert_alpha_close(ours.alpha_grads[name], theirs.alpha_grads[name], dtype)


@pytest.fixture
def pair_of_nets():
    """``make(**kwargs) -> (ours, nni)``: the same supernet built by both implementations."""

    def make(**kwargs):
        return build('rs', **kwargs), build('nni', **kwargs)

    return make
