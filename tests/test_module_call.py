"""A mixed layer's ``__call__`` skips nn.Module's call where that call would run ``forward`` and
nothing else (``_torch_compat.plain_call``, which asks the core what the module call reads): every
hook, a compiled call, tracing and a patched or subclassed forward still get what nn.Module's call
gives them, and the shortcut gives the numbers nn.Module's call gives."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.modules.module as torch_module

from proxyless_rs import ProxylessMixedInput, ProxylessMixedLayer, _core, _layer
from proxyless_rs._torch_compat import plain_call

# Run at both ends of the torch span too (make test-regression, make span).
pytestmark = pytest.mark.regression


def linear_layer(seed: int = 0) -> ProxylessMixedLayer:
    torch.manual_seed(seed)
    layer = ProxylessMixedLayer([(f'c{k}', nn.Linear(4, 4)) for k in range(3)], nn.Parameter(torch.randn(3)),
                                nn.Softmax(-1), 'op')
    layer.resample({'op': 'c1'})
    return layer


def step(layer: nn.Module, call) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Output, alpha gradient and weight gradients of one forward and backward through ``call``."""
    torch.manual_seed(1)
    x = torch.randn(2, 4, requires_grad=True)
    out = call(layer, x)
    out.square().sum().backward()
    weights = [p.grad.clone() for name, p in layer.named_parameters() if 'alpha' not in name and p.grad is not None]
    return out.detach(), layer._arch_alpha.grad.clone(), weights


def test_this_torch_takes_the_shortcut():
    # A torch whose nn.Module call reads more than the core knows turns the shortcut off (slower, never
    # wrong); this says which torch of the span did.
    assert _core.module_call_is_known(), f'torch {torch.__version__}: nn.Module.__call__ is not the one known'
    assert plain_call(linear_layer())


def test_shortcut_gives_nn_module_calls_numbers():
    shortcut = step(linear_layer(), lambda layer, x: layer(x))
    full = step(linear_layer(), lambda layer, x: nn.Module.__call__(layer, x))
    for a, b in zip(shortcut[:2], full[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(shortcut[2]) == len(full[2]) == 2  # the sampled candidate's weight and bias
    for a, b in zip(shortcut[2], full[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_every_hook_of_the_layer_fires_and_turns_the_shortcut_off():
    layer = linear_layer()
    fired: list[str] = []
    handles = [
        layer.register_forward_pre_hook(lambda m, args: fired.append('forward_pre')),
        layer.register_forward_hook(lambda m, args, out: fired.append('forward')),
        layer.register_full_backward_pre_hook(lambda m, grad_out: fired.append('backward_pre')),
        layer.register_full_backward_hook(lambda m, grad_in, grad_out: fired.append('backward')),
    ]
    for handle in handles:
        assert not plain_call(layer)
        step(layer, lambda layer, x: layer(x))
        handle.remove()
    assert plain_call(layer)
    # Each hook fired at every step it was registered for: the first step all four, the last one.
    assert fired.count('forward_pre') == 1 and fired.count('forward') == 2
    assert fired.count('backward_pre') == 3 and fired.count('backward') == 4


def test_a_hook_that_changes_the_output_is_seen():
    layer = linear_layer()
    plain = step(layer, lambda layer, x: layer(x))[0]
    handle = layer.register_forward_hook(lambda m, args, out: out * 2)
    try:
        torch.testing.assert_close(step(layer, lambda layer, x: layer(x))[0], plain * 2)
    finally:
        handle.remove()


@pytest.mark.parametrize('register', [torch_module.register_module_forward_pre_hook,
                                      torch_module.register_module_forward_hook,
                                      torch_module.register_module_full_backward_hook])
def test_global_hooks_fire_on_mixed_layers_and_inputs(register):
    layer = linear_layer()
    pick = ProxylessMixedInput(2, 1, nn.Parameter(torch.zeros(2)), nn.Softmax(-1), 'pick')
    pick.resample({})
    seen: list[nn.Module] = []
    handle = register(lambda module, *rest: seen.append(module))
    try:
        assert not plain_call(layer) and not plain_call(pick)
        a, b = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
        (layer(a) + pick([a, b])).sum().backward()
    finally:
        handle.remove()
    assert any(m is layer for m in seen) and any(m is pick for m in seen)
    assert plain_call(layer) and plain_call(pick)


def test_a_patched_or_subclassed_forward_is_called():
    layer = linear_layer()
    layer.forward = lambda x: x + 1  # an instance attribute, as tools that wrap forward set it
    x = torch.zeros(2, 4)
    torch.testing.assert_close(layer(x), x + 1)

    class Doubled(ProxylessMixedLayer):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs) * 2

    torch.manual_seed(0)
    doubled = Doubled([(f'c{k}', nn.Linear(4, 4)) for k in range(3)], nn.Parameter(torch.randn(3)), nn.Softmax(-1),
                      'op')
    doubled.resample({'op': 'c1'})
    torch.testing.assert_close(doubled(x), linear_layer()(x) * 2)


def test_a_forward_path_patched_after_the_first_call_is_called(monkeypatch):
    # The layer keeps its candidate list from its first call; a forward_path patched later, on the
    # instance or on the class, is what the next call runs.
    x = torch.zeros(2, 4)
    layer = linear_layer()
    plain = layer(x)
    layer.forward_path = lambda index, x: x - index
    torch.testing.assert_close(layer(x), x - 1)
    del layer.forward_path
    torch.testing.assert_close(layer(x), plain)
    monkeypatch.setattr(type(layer), 'forward_path', lambda self, index, x: x + index)
    torch.testing.assert_close(layer(x), x + 1)


def test_a_layer_called_before_its_first_draw_is_refused_by_name():
    layer = ProxylessMixedLayer([('c0', nn.Linear(4, 4))], nn.Parameter(torch.zeros(1)), nn.Softmax(-1), 'op')
    with pytest.raises(RuntimeError, match='resample'):
        layer(torch.zeros(2, 4))


def test_without_the_shortcut_the_numbers_are_the_same(monkeypatch):
    shortcut = step(linear_layer(), lambda layer, x: layer(x))
    calls: list[nn.Module] = []

    def refused(module: nn.Module) -> bool:
        calls.append(module)
        return False

    monkeypatch.setattr(_layer, 'plain_call', refused)
    full = step(linear_layer(), lambda layer, x: layer(x))
    assert calls, 'the layer did not ask'
    for a, b in zip(shortcut[:2], full[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_module_call_reading_an_unknown_global_turns_the_shortcut_off(monkeypatch):
    assert _core.module_call_is_known()
    known = nn.Module._call_impl
    namespace = dict(vars(torch_module))
    # The same call, also reading a global hook dict of a kind plain_call does not check.
    source = 'def _call_impl(self, *args, **kwargs):\n    if _global_new_kind_of_hooks:\n        pass\n' \
             '    return self.forward(*args, **kwargs)\n'
    exec(source, namespace)  # noqa: S102 (a fixed string)
    monkeypatch.setattr(nn.Module, '_call_impl', namespace['_call_impl'])
    if nn.Module.__call__ is known:  # torch 2.0: __call__ is _call_impl itself
        monkeypatch.setattr(nn.Module, '__call__', namespace['_call_impl'])
    assert not _core.module_call_is_known()


@pytest.mark.skipif(not hasattr(nn.Module, 'compile'), reason="nn.Module.compile came with torch 2.2")
def test_a_compiled_layer_takes_nn_module_calls_compiled_call():
    import torch._dynamo

    torch._dynamo.reset()
    layer = linear_layer()
    eager = step(linear_layer(), lambda layer, x: layer(x))
    layer.compile(backend='eager')
    assert not plain_call(layer)
    compiled = step(layer, lambda layer, x: layer(x))
    for a, b in zip(compiled[:2], eager[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_torch_fx_sees_the_layer_as_a_module_call():
    # torch.fx patches nn.Module.__call__ for the length of a trace: a layer whose own __call__ skipped
    # it would not be seen as a module call (a leaf of the tracer's would run its forward on proxies).
    import torch.fx

    layer = linear_layer()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x) + 1

    class LayerAsLeaf(torch.fx.Tracer):
        def is_leaf_module(self, module: nn.Module, name: str) -> bool:
            return module is layer or super().is_leaf_module(module, name)

    graph = LayerAsLeaf().trace(Net())
    assert [node.target for node in graph.nodes if node.op == 'call_module'] == ['layer']
    assert plain_call(layer)  # the patch is gone with the trace
