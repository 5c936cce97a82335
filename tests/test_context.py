"""The saved-forward stack: what is kept, for how long, and when nothing is."""

import pytest
import torch
import torch.nn as nn

from conftest import build, train_step

import proxyless_rs


def saved_entries(net) -> int:
    return sum(len(m.ctx) for m in net.mixed())


def test_nothing_is_saved_under_no_grad_unlike_nni():
    ours, theirs = build('rs'), build('nni')
    for net in (ours, theirs):
        net.resample()
        with torch.no_grad():
            for _ in range(10):
                net(torch.randn(3, 8))
    assert saved_entries(ours) == 0
    # NNI 2.10 keeps one entry per call (two for the layer called twice) until the next resample.
    assert sum(len(m.ctx.layer_input) for m in theirs.mixed()) == 10 * 6


def test_nothing_is_saved_when_no_output_requires_grad():
    net = build('rs')
    net.requires_grad_(False)
    net.resample()
    net(torch.randn(3, 8))
    assert saved_entries(net) == 0


def test_entries_are_pushed_per_call_and_popped_by_backward():
    net = build('rs')
    net.resample({'pick': 1})  # pick `p`, so every layer is on the path to the loss
    out = net(torch.randn(3, 8))
    assert len(net.first.ctx) == 2  # called twice per forward
    assert [len(m.ctx) for m in net.mixed()[1:]] == [1, 1, 1, 1]
    out.sum().backward()
    assert saved_entries(net) == 0


def test_no_entry_survives_many_training_steps():
    net = build('rs')
    for step in range(20):
        train_step(net, seed=step)
        # Layers off the loss's path (`third` and `pair` when `pick` takes `a`) keep their entry until
        # the next resample, which clears it: never more than one step's worth.
        assert saved_entries(net) <= 6
    net.resample()
    assert saved_entries(net) == 0


def test_resample_clears_the_context():
    net = build('rs')
    net.resample()
    net(torch.randn(3, 8))
    assert saved_entries(net) > 0
    net.resample()
    assert saved_entries(net) == 0


def test_context_api():
    alpha = nn.Parameter(torch.zeros(3))
    softmax = nn.Softmax(-1)
    ctx = proxyless_rs.ProxylessContext(alpha, softmax, 'op')
    assert ctx.arch_alpha is alpha and ctx.softmax is softmax and ctx.label == 'op'
    x = torch.randn(2, requires_grad=True)
    assert ctx.save_forward_context(((x,), {}), x * 2, 1) is True
    assert ctx.sample() in (0, 1, 2)
    assert ctx.save_forward_context(((x,), {}), x.detach(), 1) is False
    assert len(ctx) == 1 and 'saved=1' in repr(ctx)
    assert ctx.backward_hook.ctx is ctx
    ctx.clear_context()
    assert len(ctx) == 0


def test_backward_with_an_empty_context_names_the_layer():
    net = build('rs')
    net.resample({'pick': 0})
    out = net(torch.randn(3, 8)).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match=r"mixed layer \"pick\".*saved context is empty"):
        out.backward()


def test_full_backward_hook_route_gives_nni_gradients():
    """ctx.backward_hook still works registered the way NNI 2.10 registers its hook."""
    from nni.nas.oneshot.pytorch.supermodule.proxyless import ProxylessMixedLayer as NNIMixedLayer

    class FullHookLayer(NNIMixedLayer):
        def __init__(self, *args):
            super().__init__(*args)
            self._backward_hooks.clear()
            self.ctx = proxyless_rs.ProxylessContext(self._arch_alpha, self._softmax, self.label)
            self.register_full_backward_hook(self.ctx.backward_hook)

    grads = []
    for cls in (FullHookLayer, NNIMixedLayer, proxyless_rs.ProxylessMixedLayer):
        torch.manual_seed(0)
        layer = cls([(f'op{k}', nn.Linear(4, 4)) for k in range(3)], nn.Parameter(torch.randn(3)), nn.Softmax(-1), 'op')
        layer.resample({'op': 'op1'})
        (layer(torch.randn(2, 4, requires_grad=True)) ** 2).sum().backward()
        grads.append(layer._arch_alpha.grad)
        assert len(layer.ctx) == 0 if cls is not NNIMixedLayer else not layer.ctx.layer_input
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(grads[2], grads[1], rtol=1e-5, atol=1e-8)


def test_hooks_are_released_with_the_graph():
    """The output hooks (which hold their layer) go away with the graph; resample clears the rest."""
    import sys

    net = build('rs')
    net.resample({'pick': 1})
    baseline = [sys.getrefcount(m) for m in net.mixed()]
    out = net(torch.randn(3, 8))
    assert [sys.getrefcount(m) for m in net.mixed()] != baseline
    del out
    assert [sys.getrefcount(m) for m in net.mixed()] == baseline
    net.resample({'pick': 1})
    out = net(torch.randn(3, 8))
    out.sum().backward()
    del out
    assert [sys.getrefcount(m) for m in net.mixed()] == baseline
    assert saved_entries(net) == 0


def test_no_arch_grad_skips_the_alpha_work_and_keeps_weight_gradients():
    ours, reference = build('rs'), build('rs')
    for net in (ours, reference):
        net.resample({'pick': 1, 'first': 'linear', 'shared': 'tanh', 'pair': 'plus'})
    x = torch.randn(3, 8)
    with proxyless_rs.no_arch_grad(ours):
        assert not any(m.ctx.enabled for m in ours.mixed())
        ours(x).sum().backward()
        assert saved_entries(ours) == 0
    assert all(m.ctx.enabled for m in ours.mixed())
    reference(x).sum().backward()
    for (name, p), (_, q) in zip(ours.named_parameters(), reference.named_parameters()):
        if name.endswith('_arch_alpha'):
            assert p.grad is None and q.grad is not None
        elif q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
