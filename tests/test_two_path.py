"""Two-path mode (ProxylessNAS paper): gradient, rescale, cost; and dict outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import proxyless_rs
from conftest import DEVICES, requires_nni2
from proxyless_rs import ProxylessMixedInput, ProxylessMixedLayer, rescale_two_path

# Run at both ends of the torch span too (make test-regression, make span).
pytestmark = pytest.mark.regression


def linear_layer(n=5, mode='two', dim=4, label='op', alpha=None, dtype=torch.float64, device='cpu'):
    torch.manual_seed(0)
    paths = [(f'c{k}', nn.Linear(dim, dim).to(dtype)) for k in range(n)]
    alpha = alpha if alpha is not None else nn.Parameter(torch.randn(n, dtype=dtype))
    return ProxylessMixedLayer(paths, alpha, nn.Softmax(-1), label, mode=mode).to(device)


def randn(*shape, dtype=torch.float64, device='cpu'):
    """Drawn on the host, so that every device sees the same numbers."""
    return torch.randn(*shape, dtype=dtype).to(device)


def gate_objective(layer, x, w, logits, involved):
    """sum_j softmax(logits[involved])_j * <out_j, w>: the relaxed objective whose gradient the
    binary-gate estimator gives exactly when the loss is linear in the layer's output."""
    with torch.no_grad():
        scores = torch.stack([(layer.forward_path(j, x) * w).sum() for j in involved])
        return (torch.softmax(logits[involved], -1) * scores).sum().item()


def finite_difference(layer, x, w, involved, eps=1e-6):
    alpha = layer._arch_alpha.detach()
    grad = torch.zeros_like(alpha)
    for i in range(len(alpha)):
        plus, minus = alpha.clone(), alpha.clone()
        plus[i] += eps
        minus[i] -= eps
        difference = gate_objective(layer, x, w, plus, involved) - gate_objective(layer, x, w, minus, involved)
        grad[i] = difference / (2 * eps)
    return grad


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('seed', range(5))
def test_two_path_gradient_equals_finite_difference_of_the_two_path_objective(seed, device):
    layer = linear_layer(device=device)
    x, w = randn(3, 4, device=device), randn(3, 4, device=device)
    torch.manual_seed(seed)
    layer.resample({})
    involved = [layer._sample_idx, layer._partner]
    assert involved[0] != involved[1]
    (layer(x) * w).sum().backward()
    expected = finite_difference(layer, x, w, involved)
    torch.testing.assert_close(layer._arch_alpha.grad, expected, rtol=1e-6, atol=1e-9)
    others = [i for i in range(5) if i not in involved]
    assert torch.all(layer._arch_alpha.grad[others] == 0)
    assert layer._arch_alpha.grad.device.type == device


@pytest.mark.parametrize('device', DEVICES)
def test_full_mode_gradient_equals_finite_difference_of_the_full_objective(device):
    layer = linear_layer(mode='full', device=device)
    x, w = randn(3, 4, device=device), randn(3, 4, device=device)
    layer.resample({})
    (layer(x) * w).sum().backward()
    torch.testing.assert_close(layer._arch_alpha.grad, finite_difference(layer, x, w, list(range(5))),
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_rescale_keeps_every_unsampled_probability(optimizer, dtype, device):
    layer = linear_layer(n=7, dtype=dtype, device=device)
    opt = (torch.optim.SGD([layer._arch_alpha], lr=5.0) if optimizer == 'sgd'
           else torch.optim.Adam([layer._arch_alpha], lr=0.5))
    for step in range(10):
        torch.manual_seed(step)
        layer.resample({})
        involved = [layer._sample_idx, layer._partner]
        before = torch.softmax(layer._arch_alpha.detach(), -1).clone()
        opt.zero_grad()
        (layer(randn(3, 4, dtype=dtype, device=device)) ** 2).sum().backward()
        opt.step()
        moved = torch.softmax(layer._arch_alpha.detach(), -1)
        rescale_two_path(layer)
        after = torch.softmax(layer._arch_alpha.detach(), -1)
        others = [i for i in range(7) if i not in involved]
        torch.testing.assert_close(after[others], before[others], rtol=0, atol=1e-6)
        torch.testing.assert_close(after[involved].sum(), before[involved].sum(), rtol=0, atol=1e-6)
        assert not torch.allclose(moved[others], before[others], atol=1e-6)  # the step alone did move them
    rescale_two_path(layer)  # nothing pending: a no-op


def test_two_path_backward_evaluates_one_extra_candidate(monkeypatch):
    calls = []
    original = ProxylessMixedLayer.forward_path

    def counting(self, index, *args, **kwargs):
        calls.append((index, torch.is_grad_enabled()))
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(ProxylessMixedLayer, 'forward_path', counting)
    for mode, extra in (('two', 1), ('full', 6)):
        calls.clear()
        layer = linear_layer(n=7, mode=mode)
        layer.resample({})
        layer(torch.randn(2, 4, dtype=torch.float64)).sum().backward()
        assert [grad for _, grad in calls] == [True] + [False] * extra
        if mode == 'two':
            assert calls[1][0] == layer._partner


def test_layers_sharing_a_label_share_the_draw_and_one_rescale():
    alpha = nn.Parameter(torch.randn(4, dtype=torch.float64))
    first = linear_layer(n=4, alpha=alpha, label='shared')
    second = linear_layer(n=4, alpha=alpha, label='shared')
    torch.manual_seed(1)
    memo = first.resample({})
    second.resample(memo)
    assert (second._sample_idx, second._partner) == (first._sample_idx, first._partner)
    involved = (first._sample_idx, first._partner)
    before = torch.softmax(alpha.detach(), -1).clone()
    x = torch.randn(2, 4, dtype=torch.float64)
    second(first(x)).sum().backward()
    with torch.no_grad():
        alpha -= alpha.grad
    model = nn.ModuleList([first, second])
    rescale_two_path(model)
    # The rescale ends the draw: no layer of the parameter holds on to its partner.
    assert first._partner is None and second._partner is None
    after = torch.softmax(alpha.detach(), -1)
    others = [i for i in range(4) if i not in involved]
    torch.testing.assert_close(after[others], before[others], rtol=0, atol=1e-12)
    # A memo written by hand (no draw to join) falls back to the full-mode gradient.
    second.resample({'shared': 'c0'})
    assert second._partner is None


def test_a_forward_after_the_rescale_without_a_new_draw_gets_the_full_mode_gradient():
    # The draw is recorded once, in the parameter; the rescale ends it. A forward on the same path
    # afterwards (no resample) has no partner to pair with, so its gradient is full mode's, as for
    # an index taken from a hand-written memo; before, a partner cached in the layer outlived it.
    torch.manual_seed(3)
    two = linear_layer(n=4)
    full = linear_layer(n=4, mode='full')
    full.load_state_dict(two.state_dict())
    two.resample({})
    x = torch.randn(2, 4, dtype=torch.float64)
    two(x).sum().backward()
    with torch.no_grad():
        two._arch_alpha -= two._arch_alpha.grad
        full._arch_alpha.copy_(two._arch_alpha)
    rescale_two_path(two)
    with torch.no_grad():
        full._arch_alpha.copy_(two._arch_alpha)
    two._arch_alpha.grad = None
    full.resample({'op': two._sampled})
    two(x).sum().backward()
    full(x).sum().backward()
    assert two._partner is None
    torch.testing.assert_close(two._arch_alpha.grad, full._arch_alpha.grad, rtol=0, atol=0)


@pytest.mark.parametrize('device', DEVICES)
def test_mixed_input_two_path(device):
    alpha = nn.Parameter(torch.randn(4, dtype=torch.float64))
    pick = ProxylessMixedInput(4, 1, alpha, nn.Softmax(-1), 'pick', mode='two').to(device)
    inputs = [randn(3, device=device).requires_grad_() for _ in range(4)]
    w = randn(3, device=device)
    torch.manual_seed(0)
    pick.resample({})
    a, b = pick.active_index, pick._partner
    (pick(inputs) * w).sum().backward()
    scores = torch.stack([(inputs[a] * w).sum(), (inputs[b] * w).sum()]).detach()
    p = torch.softmax(pick._arch_alpha.detach()[[a, b]], -1)
    expected = p * (scores - (p * scores).sum())
    torch.testing.assert_close(pick._arch_alpha.grad[[a, b]], expected)
    assert inputs[a].grad is not None and inputs[b].grad is None


class DictPair(nn.Module):
    def __init__(self, dim, reverse):
        super().__init__()
        self.a, self.b, self.reverse = nn.Linear(dim, dim), nn.Linear(dim, dim), reverse

    def forward(self, x):
        items = [('mean', self.a(x)), ('scale', torch.tanh(self.b(x)))]
        return dict(reversed(items) if self.reverse else items)


class TuplePair(DictPair):
    def forward(self, x):
        out = super().forward(x)
        return out['mean'], out['scale']


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('mode', ['full', 'two'])
def test_dict_outputs_get_gate_gradients_over_every_tensor(mode, device):
    """A dict of tensors gives the same alpha gradient as the tuple of the same tensors, whatever
    order each candidate builds its dict in."""
    grads = []
    for cls in (DictPair, TuplePair):
        torch.manual_seed(0)
        layer = ProxylessMixedLayer([(f'c{k}', cls(4, reverse=k % 2 == 1)) for k in range(3)],
                                    nn.Parameter(torch.randn(3, dtype=torch.float64)), nn.Softmax(-1), 'op', mode=mode)
        layer.double().to(device)
        torch.manual_seed(5)
        layer.resample({})
        out = layer(randn(2, 4, device=device))
        mean, scale = (out['mean'], out['scale']) if isinstance(out, dict) else out
        if isinstance(out, dict):
            zeros = torch.zeros(1, 4, dtype=torch.float64, device=device)
            assert list(out) == list(layer.forward_path(layer._sample_idx, zeros))
        (mean.sum() + (scale ** 2).sum()).backward()
        grads.append(layer._arch_alpha.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-15)
    assert grads[0].abs().sum() > 0


@requires_nni2
def test_strategy_builds_two_path_layers_and_rescales(monkeypatch):
    from test_strategy import DigitsSpace, run

    calls = []
    original = proxyless_rs._search_step.rescale_two_path
    monkeypatch.setattr(proxyless_rs._search_step, 'rescale_two_path', lambda *m: (calls.append(1), original(*m)))
    strategy = proxyless_rs.strategy.Proxyless(mode='two')
    run(strategy, max_epochs=1)
    assert {m.mode for m in strategy.model.nas_modules} == {'two'}
    assert len(calls) == 10  # once per architecture step
    (architecture,) = strategy.export_top_models()
    assert set(architecture) == {'first', 'second', 'readout'}
    with pytest.raises(ValueError, match='mode .three. does not exist'):
        proxyless_rs.strategy.Proxyless(mode='three').attach_model(DigitsSpace())
