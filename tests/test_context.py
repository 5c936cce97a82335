"""Per-call saved state: what is kept, for how long, and when nothing is."""

import pytest
import torch
import torch.nn as nn

import proxyless_rs
from conftest import build, train_step

# Run at both ends of the torch span too (make test-regression, make span).
pytestmark = pytest.mark.regression


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


def test_live_calls_are_counted_per_call_and_freed_by_backward():
    net = build('rs')
    net.resample({'pick': 1})  # pick `p`, so every layer is on the path to the loss
    out = net(torch.randn(3, 8))
    assert len(net.first.ctx) == 2  # called twice per forward
    assert [len(m.ctx) for m in net.mixed()[1:]] == [1, 1, 1, 1]
    out.sum().backward()
    assert saved_entries(net) == 0  # freed by the backward, on every torch of the span
    del out
    assert saved_entries(net) == 0


def test_nothing_survives_a_training_step():
    net = build('rs')
    for step in range(20):
        train_step(net, seed=step)
        # Layers off the loss's path (`third` and `pair` when `pick` takes `a`) never see a backward:
        # their saved state goes with the graph, as soon as the step's loss is dropped.
        assert saved_entries(net) == 0


def test_a_dropped_output_frees_its_saved_state_and_resample_keeps_live_calls():
    net = build('rs')
    net.resample()
    out = net(torch.randn(3, 8))
    assert saved_entries(net) > 0
    # A new architecture does not invalidate calls already made: their hooks own what they need.
    net.resample()
    assert saved_entries(net) > 0
    del out
    assert saved_entries(net) == 0


def test_context_api():
    alpha = nn.Parameter(torch.zeros(3))
    softmax = nn.Softmax(-1)
    ctx = proxyless_rs.ProxylessContext(alpha, softmax, 'op')
    assert ctx.arch_alpha is alpha and ctx.softmax is softmax and ctx.label == 'op'
    assert ctx.name == "ProxylessContext 'op'" and ctx.mode == 'full' and ctx.partner_of(0) is None
    assert ctx.arch.alpha is alpha
    assert ctx.resample() in (0, 1, 2)
    assert ctx.resample(2) == 2
    with pytest.raises(ValueError, match=r"ProxylessContext 'op': index 3 is not in 0\.\.3"):
        ctx.resample(3)
    layer = proxyless_rs.ProxylessMixedLayer([(f'op{k}', nn.Linear(2, 2)) for k in range(3)], alpha, softmax, 'op')
    x = torch.randn(4, 2)
    # The choice contract: the alternatives as a list of modules, or one callable taking the index.
    out = ctx.forward([layer.op0, layer.op1, layer.op2], (x,), {}, 1, alpha)
    torch.testing.assert_close(out, layer.op1(x), rtol=0, atol=0)
    assert len(ctx) == 1 and 'live calls=1' in repr(ctx)
    with torch.no_grad():
        ctx.forward(layer.forward_path, (x,), None, 1, alpha)
    assert len(ctx) == 1
    del out
    assert len(ctx) == 0


def test_backward_twice_with_retain_graph_adds_the_gradient_twice():
    gradients = []
    for backwards in (1, 2):
        net = build('rs')
        net.resample({'pick': 1, 'first': 'linear', 'shared': 'tanh', 'pair': 'plus'})
        loss = net(torch.randn(3, 8)).square().sum()
        for _ in range(backwards):
            torch.manual_seed(7)  # the `dropout` candidate draws the same masks in each backward
            loss.backward(retain_graph=True)
        gradients.append({name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None})
        del loss
        assert saved_entries(net) == 0
    assert gradients[0].keys() == gradients[1].keys()
    for name, once in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], 2 * once, msg=name)


def test_backward_twice_without_retain_graph_names_the_layer():
    # A graph in which no torch op saved anything: torch itself lets the second backward run.
    pick = proxyless_rs.ProxylessMixedInput(2, 1, nn.Parameter(torch.zeros(2)), nn.Softmax(-1), 'pick')
    pick.resample({'pick': 0})
    a, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    total = pick([a, b]).sum()
    total.backward()
    with pytest.raises(RuntimeError, match=r"ProxylessMixedInput 'pick': backward reached this call of the layer a "
                                           r"second time.*retain_graph=True"):
        total.backward()


def test_hooks_are_released_with_the_graph():
    """The output hooks (which hold their layer and their call's saved state) go away with the graph."""
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


def _linear_choice(candidates):
    alpha = nn.Parameter(torch.randn(len(candidates), dtype=torch.float64) * 1e-3)
    return proxyless_rs.ProxylessMixedLayer([(f'op{k}', m) for k, m in enumerate(candidates)], alpha,
                                            nn.Softmax(-1), 'direct')


def _alpha_grad(layer, x, index):
    layer.resample({'direct': f'op{index}'})
    layer._arch_alpha.grad = None
    layer(x).square().sum().backward()
    return layer._arch_alpha.grad.clone()


def test_candidates_called_directly_give_what_their_python_calls_give():
    """The core calls a candidate without forward_path and nn.Module.__call__ where those do nothing
    (and an nn.Linear through its linear op): the same outputs and alpha gradients as the Python calls."""
    class Scaled(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    torch.manual_seed(0)
    candidates = [nn.Linear(4, 4, dtype=torch.float64), nn.Linear(4, 4, bias=False, dtype=torch.float64),
                  Scaled(4, 4, dtype=torch.float64), nn.Sequential(nn.Linear(4, 4, dtype=torch.float64), nn.Tanh())]
    layer = _linear_choice(candidates)
    x = torch.randn(3, 4, dtype=torch.float64)
    direct = [_alpha_grad(layer, x, k) for k in range(len(candidates))]

    class Patched(proxyless_rs.ProxylessMixedLayer):  # a subclass's forward_path is called as such
        def forward_path(self, index, *args, **kwargs):
            return self._modules[self.op_names[index]](*args, **kwargs)

    layer.__class__ = Patched
    through_python = [_alpha_grad(layer, x, k) for k in range(len(candidates))]
    assert all(torch.equal(a, b) for a, b in zip(direct, through_python))


@pytest.mark.parametrize('where', ['module', 'global', 'pre', 'forward_attr'])
def test_hooks_on_candidates_still_run_in_the_backward(where):
    torch.manual_seed(0)
    candidates = [nn.Linear(4, 4, dtype=torch.float64) for _ in range(3)]
    layer = _linear_choice(candidates)
    seen = []

    def hook(module, *_):
        index = next((k for k, c in enumerate(candidates) if c is module), None)
        if index is not None:  # a global hook sees the layer too
            seen.append((index, torch.is_grad_enabled()))

    if where == 'module':
        handles = [c.register_forward_hook(hook) for c in candidates]
    elif where == 'pre':
        handles = [c.register_forward_pre_hook(hook) for c in candidates]
    elif where == 'global':
        handles = [nn.modules.module.register_module_forward_hook(hook)]
    else:  # an instance attribute `forward`, as accelerate's hooks set it
        handles = []

        def wrapped(index, forward):
            def call(x):
                seen.append((index, torch.is_grad_enabled()))
                return forward(x)
            return call

        for k, c in enumerate(candidates):
            c.forward = wrapped(k, c.forward)
    try:
        layer.resample({'direct': 'op1'})
        layer(torch.randn(2, 4, dtype=torch.float64)).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [(1, True), (0, False), (2, False)]
