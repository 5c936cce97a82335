"""Alpha's gradient keeps autograd's contract: it is an input of the autograd node each call's
output passes through, so autograd computes it only when the running backward needs it, adds it
into ``alpha.grad`` itself (alpha's hooks fire) and hands it to whichever tensor was the layer's
alpha (``torch.func.functional_call``).

Under NNI 3.0 each case is checked against NNI 3.0's own class, on the same candidates and seeds
(its ``_ProxylessFunction`` takes alpha as an input too). Under NNI 2.10 it is checked against
torch's rules and a float64 reference of the binary-gate formula: NNI 2.10's layer writes
``alpha.grad`` from a module hook, and so breaks the first three cases (noted in each test).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from nni.nas.oneshot.pytorch.supermodule import proxyless as nni_proxyless

from conftest import NNI3, TORCH_RELEASE, assert_alpha_close
from proxyless_rs import ProxylessMixedLayer


class Counted(nn.Module):
    """A candidate that counts its forwards (the binary-gate backward's extra work)."""

    def __init__(self, dim: int, act: nn.Module):
        super().__init__()
        self.linear, self.act, self.calls = nn.Linear(dim, dim), act, 0

    def forward(self, x):
        self.calls += 1
        return self.act(self.linear(x))


def build(cls, seed: int = 0, dim: int = 4):
    torch.manual_seed(seed)
    paths = {'linear': Counted(dim, nn.Identity()), 'tanh': Counted(dim, nn.Tanh()), 'relu': Counted(dim, nn.ReLU()),
             'sigmoid': Counted(dim, nn.Sigmoid())}
    layer = cls(paths if NNI3 else list(paths.items()), nn.Parameter(torch.randn(4)), nn.Softmax(-1), 'op')
    layer.resample({'op': 'tanh'})
    return layer


def extra_forwards(layer) -> int:
    return sum(c.calls for c in layer.children() if isinstance(c, Counted)) - 1  # minus the sampled forward


IMPLEMENTATIONS = [ProxylessMixedLayer] + ([nni_proxyless.ProxylessMixedLayer] if NNI3 else [])


def reference_alpha_grad(layer, alpha: torch.Tensor, x: torch.Tensor, loss_of) -> torch.Tensor:
    """float64 ``dL/dalpha_i = sum_j b_j p_j (delta_ij - p_i)``, ``b_j = <out_j, dL/dy>``, ``p = softmax(alpha)``."""
    outs = [candidate(x).detach().double() for candidate in layer.children() if isinstance(candidate, Counted)]
    y = outs[1].clone().requires_grad_(True)  # the sampled path: tanh
    (grad_y,) = torch.autograd.grad(loss_of(y), y)
    b = torch.stack([(out * grad_y).sum() for out in outs])
    p = torch.softmax(alpha.detach().double(), -1)
    return p * (b - (p * b).sum())


@pytest.mark.parametrize('cls', IMPLEMENTATIONS)
def test_input_gradients_leave_alpha_alone_and_evaluate_nothing(cls):
    # NNI 2.10's layer writes alpha.grad here too, and runs the extra forwards.
    layer = build(cls)
    x = torch.randn(3, 4, requires_grad=True)
    (grad_x,) = torch.autograd.grad(layer(x).square().sum(), x)
    assert layer._arch_alpha.grad is None
    if cls is ProxylessMixedLayer:
        assert extra_forwards(layer) == 0
    reference = build(cls)
    reference_x = x.detach().clone().requires_grad_(True)
    reference.tanh(reference_x).square().sum().backward()
    torch.testing.assert_close(grad_x, reference_x.grad, rtol=0, atol=0)


@pytest.mark.parametrize('cls', IMPLEMENTATIONS)
def test_a_frozen_alpha_gets_no_gradient_and_costs_no_forward(cls):
    # NNI 2.10's layer writes alpha.grad anyway, and runs the extra forwards.
    layer = build(cls)
    layer._arch_alpha.requires_grad_(False)
    layer(torch.randn(3, 4)).square().sum().backward()
    assert layer._arch_alpha.grad is None
    assert layer.tanh.linear.weight.grad is not None and layer.linear.linear.weight.grad is None
    if cls is ProxylessMixedLayer:
        assert extra_forwards(layer) == 0 and len(layer.ctx) == 0


@pytest.mark.parametrize('cls', IMPLEMENTATIONS)
def test_alpha_hooks_fire_once_per_backward(cls):
    # NNI 2.10's layer fires neither hook: it writes alpha.grad outside autograd.
    layer = build(cls)
    alpha = layer._arch_alpha
    seen, accumulated = [], []
    alpha.register_hook(lambda grad: seen.append(grad.clone()))
    if TORCH_RELEASE >= (2, 1):
        alpha.register_post_accumulate_grad_hook(lambda p: accumulated.append(p.grad.clone()))
    x = torch.randn(3, 4)
    for step in range(2):
        layer(x).square().sum().backward()
        assert len(seen) == step + 1
        if TORCH_RELEASE >= (2, 1):
            assert len(accumulated) == step + 1
            torch.testing.assert_close(accumulated[-1], alpha.grad, rtol=0, atol=0)
    torch.testing.assert_close(seen[0] + seen[1], alpha.grad, rtol=1e-6, atol=1e-7)


def test_hooks_and_gradients_match_nni3():
    if not NNI3:
        pytest.skip("NNI 2.10's layer fires no alpha hook: there is nothing of NNI's to compare with")
    grads = []
    for cls in IMPLEMENTATIONS:
        layer = build(cls)
        seen = []
        layer._arch_alpha.register_hook(seen.append)
        layer(torch.randn(3, 4, generator=torch.Generator().manual_seed(1))).square().sum().backward()
        assert len(seen) == 1
        grads.append(layer._arch_alpha.grad)
    assert_alpha_close(grads[0], grads[1], torch.float32)


@pytest.mark.parametrize('cls', IMPLEMENTATIONS)
def test_functional_call_sends_the_gradient_to_the_alpha_it_was_given(cls):
    # NNI 2.10's layer writes the module's own alpha.grad, computed with its own probabilities.
    layer = build(cls)
    other = torch.randn(4, requires_grad=True)
    x = torch.randn(3, 4)
    params = dict(layer.named_parameters(), _arch_alpha=other)
    loss_of = lambda y: y.square().sum()  # noqa: E731
    loss_of(torch.func.functional_call(layer, params, (x,))).backward()
    assert layer._arch_alpha.grad is None
    assert other.grad is not None
    reference = reference_alpha_grad(build(cls), other, x, loss_of)
    assert_alpha_close(other.grad, reference.float(), torch.float32)


def test_functional_call_matches_nni3():
    if not NNI3:
        pytest.skip("NNI 2.10's layer ignores the alpha functional_call gives it: nothing of NNI's to compare with")
    grads = []
    for cls in IMPLEMENTATIONS:
        layer = build(cls)
        other = torch.linspace(-1, 1, 4).requires_grad_(True)
        params = dict(layer.named_parameters(), _arch_alpha=other)
        torch.func.functional_call(layer, params, (torch.ones(3, 4),)).square().sum().backward()
        grads.append(other.grad)
    assert_alpha_close(grads[0], grads[1], torch.float32)


def test_differentiating_alpha_gradient_is_refused_by_name():
    # NNI 3.0 gives a value here (its backward is differentiated through the softmax only), NNI 2.10
    # writes alpha.grad at the first call: proxyless_rs refuses rather than give a third number.
    layer = build(ProxylessMixedLayer)
    loss = layer(torch.randn(3, 4)).square().sum()
    with pytest.raises(RuntimeError, match=r"ProxylessMixedLayer 'op': proxyless_rs .* create_graph=True"):
        torch.autograd.grad(loss, layer._arch_alpha, create_graph=True)


def test_a_gradient_penalty_on_the_inputs_runs_with_create_graph():
    layer = build(ProxylessMixedLayer)
    x = torch.randn(3, 4, requires_grad=True)
    (grad_x,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    assert extra_forwards(layer) == 0 and layer._arch_alpha.grad is None
    # The penalty depends on the layer's output, so its backward reaches alpha through the gate.
    grad_x.square().sum().backward()
    assert layer.tanh.linear.weight.grad is not None
    assert extra_forwards(layer) == 3 and layer._arch_alpha.grad is not None


def test_an_output_carries_alphas_gradient_path_whatever_its_input_requires():
    layer = build(ProxylessMixedLayer)
    for name, p in layer.named_parameters():  # under NNI 3.0 parameters() holds alpha too
        if not name.endswith('_arch_alpha'):
            p.requires_grad_(False)
    out = layer(torch.randn(3, 4))
    assert out.requires_grad
    out.square().sum().backward()
    assert layer._arch_alpha.grad is not None and layer.tanh.linear.weight.grad is None
