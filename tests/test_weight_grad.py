"""``no_weight_grad``: an architecture step that computes alpha's gradient only (the mirror image of
``no_arch_grad``). Alpha gradients are the same as without it, weights get none, autograd saves
less, and the strategy's search ends where it ended before."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import proxyless_rs
from conftest import arch_parameters, build, weight_parameters
from proxyless_rs import ProxylessMixedInput, ProxylessMixedLayer, no_weight_grad


def alpha_grads(net: nn.Module, x: torch.Tensor, seed: int, frozen: bool) -> dict[str, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    net.resample()
    if frozen:
        with no_weight_grad(net):
            net(x).square().mean().backward()
    else:
        net(x).square().mean().backward()
    return {name: p.grad for name, p in arch_parameters(net).items()}


@pytest.mark.parametrize('mode', ['full', 'two'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_alpha_gradients_are_those_of_a_full_backward(mode, dtype):
    # The regression supernet: a layer called twice, two layers sharing one alpha, kwargs, tuple
    # outputs and a mixed input; the first layer's input requires no grad.
    net = build('rs', dtype=dtype)
    for layer in net.mixed():
        layer.mode = mode if len(layer._arch_alpha) > 1 else 'full'
    x = torch.randn(6, 8, dtype=dtype)
    for seed in range(6):
        expected = alpha_grads(net, x, seed, frozen=False)
        got = alpha_grads(net, x, seed, frozen=True)
        assert expected.keys() == got.keys()
        for name in expected:
            if expected[name] is None:
                assert got[name] is None, name
            else:
                torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
        # No weight got a gradient, and each requires grad again after the block.
        assert all(p.grad is None and p.requires_grad for p in weight_parameters(net).values())


def test_depth_chain_and_cost_terms_get_the_same_alpha_gradients():
    torch.manual_seed(0)
    block = lambda: nn.Sequential(nn.Linear(8, 8), nn.Tanh())  # noqa: E731
    chain = [ProxylessMixedLayer([('0', nn.Identity()), ('1', block())], nn.Parameter(torch.randn(2)),
                                 nn.Softmax(-1), f'depth_block{i}') for i in range(3)]
    net = nn.Sequential(nn.Linear(8, 8), *chain, nn.Linear(8, 3))
    table = proxyless_rs.LatencyTable({f'depth_block{i}': {'0': 0.0, '1': 1.0 + i} for i in range(3)})
    x = torch.randn(5, 8)

    def step(frozen: bool) -> list[torch.Tensor]:
        net.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        for layer in chain:
            layer.resample({})
        with no_weight_grad(net) if frozen else torch.enable_grad():
            loss = net(x).square().mean() + 0.1 * proxyless_rs.expected_latency(net, table)
            loss.backward()
        return [layer._arch_alpha.grad for layer in chain]

    for a, b in zip(step(False), step(True)):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_a_mixed_input_over_inputs_that_require_no_grad_still_gives_alpha_a_gradient():
    # Nothing upstream requires grad inside the block: the output must carry alpha's path itself.
    pick = ProxylessMixedInput(3, 1, nn.Parameter(torch.randn(3)), nn.Softmax(-1), 'pick')
    head = nn.Linear(4, 2)
    model = nn.ModuleList([pick, head])
    torch.manual_seed(0)
    pick.resample({})
    with no_weight_grad(model):
        head(pick([torch.randn(2, 4) for _ in range(3)])).sum().backward()
    assert pick._arch_alpha.grad is not None and pick._arch_alpha.grad.abs().sum() > 0
    assert head.weight.grad is None


def used_by_the_draw(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The weights a plain backward of the current draw gives a gradient (outside any block)."""
    weights = [p for p in weight_parameters(net).values() if p.requires_grad]
    grads = torch.autograd.grad(net(x).square().mean(), weights, allow_unused=True)
    return [p for p, g in zip(weights, grads) if g is not None]


def test_the_block_switches_off_what_the_draw_uses_and_leaves_the_other_candidates():
    # Soundness: every weight the drawn paths use is switched off, so none gets a gradient. The
    # saving: the weights of candidates not drawn keep requires_grad (they take no part in the
    # forward). Before a layer's first draw, and where forward_path is patched, all of its
    # candidates are switched off.
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    first = ProxylessMixedLayer([('a', nn.Linear(8, 8)), ('b', nn.Sequential(shared, nn.Tanh())),
                                 ('c', nn.Linear(8, 8))], nn.Parameter(torch.randn(3)), nn.Softmax(-1), 'first')
    second = ProxylessMixedLayer([('a', nn.Linear(8, 8)), ('b', nn.Linear(8, 8))],
                                 nn.Parameter(torch.randn(2)), nn.Softmax(-1), 'second')
    net = nn.Sequential(first, nn.ReLU(), second, shared)  # `shared` is also outside the candidates
    block = no_weight_grad(net)
    with block:  # no draw yet: every weight is switched off
        assert not any(p.requires_grad for p in weight_parameters(net).values())
    x = torch.randn(4, 8)
    for seed in range(8):
        torch.manual_seed(seed)
        first.resample({})
        second.resample({})
        used = used_by_the_draw(net, x)
        with block:
            switched = {id(p) for p in weight_parameters(net).values() if not p.requires_grad}
            assert {id(p) for p in used} <= switched
            idle = [p for layer in (first, second) for k in range(len(layer.names)) if k != layer.active_index
                    for p in layer.candidate(k).parameters() if all(p is not q for q in shared.parameters())]
            assert idle and not any(id(p) in switched for p in idle)
            net.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
        assert all(p.grad is None and p.requires_grad for p in weight_parameters(net).values())
        assert first._arch_alpha.grad is not None and second._arch_alpha.grad is not None
    # A patched forward_path may run any candidate: the whole layer is switched off.
    second.forward_path = lambda index, *args, **kwargs: second.candidate(1 - index)(*args, **kwargs)
    with no_weight_grad(net):
        assert not any(p.requires_grad for p in second.parameters(arch=False))


def saved_tensor_bytes(net: nn.Module, x: torch.Tensor, frozen: bool) -> int:
    """What autograd saves for backward during the forward, in bytes (through saved-tensor hooks)."""
    saved = []
    torch.manual_seed(0)
    net.resample()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        with no_weight_grad(net) if frozen else torch.enable_grad():
            net(x)
    return sum(saved)


def test_autograd_saves_less_for_linear_candidates():
    net = build('rs')
    x = torch.randn(64, 8)
    full, frozen = saved_tensor_bytes(net, x, False), saved_tensor_bytes(net, x, True)
    # A linear layer saves its input only for its weight's gradient.
    assert frozen < full


def test_requires_grad_is_restored_when_the_block_raises_and_frozen_parameters_stay_frozen():
    net = build('rs')
    net.head.bias.requires_grad_(False)
    with pytest.raises(RuntimeError, match='inside'):
        with no_weight_grad(net):
            assert not net.head.weight.requires_grad and net.first._arch_alpha.requires_grad
            raise RuntimeError('inside')
    assert net.head.weight.requires_grad and not net.head.bias.requires_grad


def test_a_block_made_once_and_entered_at_every_step_gives_the_gradients_of_one_made_at_each_step():
    # README's recipe makes both blocks once, outside the loop; entered again (and inside itself),
    # each must switch off and restore exactly what a block made at that step does.
    net = build('rs')
    x = torch.randn(6, 8)
    frozen_once, skipping_once = no_weight_grad(net), proxyless_rs.no_arch_grad(net)
    weights = weight_parameters(net).values()
    contexts = [layer.ctx for layer in net.mixed()]
    for seed in range(4):
        expected = alpha_grads(net, x, seed, frozen=True)
        net.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        net.resample()
        used = used_by_the_draw(net, x)
        net.zero_grad(set_to_none=True)  # that backward's alpha gradients
        torch.manual_seed(seed)  # and the random numbers its forward and backward drew
        net.resample()
        with frozen_once:
            with frozen_once:  # entered inside itself: the outer exit restores
                pass
            assert used and not any(p.requires_grad for p in used)
            net(x).square().mean().backward()
        assert all(p.requires_grad and p.grad is None for p in weights)
        for name, p in arch_parameters(net).items():
            torch.testing.assert_close(p.grad, expected[name], rtol=0, atol=0)
        with skipping_once:
            with skipping_once:
                pass
            assert not any(ctx.enabled for ctx in contexts)
            net(x).square().mean().backward()
        assert all(ctx.enabled for ctx in contexts)
        assert all(len(ctx) == 0 for ctx in contexts)


def test_the_module_walk_is_nn_modules_own_order_with_shared_and_missing_modules():
    from proxyless_rs._choices import modules_of

    shared = nn.Linear(2, 2)
    inner = nn.Sequential(shared, nn.ReLU(), shared)
    net = nn.Sequential(inner, nn.ModuleDict({'a': shared, 'b': nn.Sequential(nn.Tanh(), inner)}), nn.Identity())
    net.register_module('missing', None)
    assert modules_of(net) == list(net.modules())
    first = list(inner.modules())
    assert modules_of(inner, net) == first + [m for m in net.modules() if m not in first]
    regression = build('rs')
    assert modules_of(regression) == list(regression.modules())
