"""The drop-in contract: what NNI 2.10 accepts we accept with NNI's numbers; where NNI gives a silently
wrong gradient we give the float64 reference of the binary-gate formula or refuse with a clear error.

The reference (``reference_alpha_grad``) evaluates every candidate in float64 on the call's inputs,
takes each gate's gradient ``b_k = <out_k, dL/dy>`` at the sampled output ``y``, and returns
``p_i (b_i - <b, p>)``; it shares no code with the implementation.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import subprocess
import sys
import textwrap
from typing import NamedTuple

import pytest
import torch
import torch.nn as nn
import torch.utils.checkpoint as checkpoint
from nni.nas.oneshot.pytorch.supermodule.proxyless import ProxylessMixedLayer as NNIMixedLayer

import proxyless_rs
from conftest import TORCH_RELEASE, requires_nni2
from proxyless_rs import ProxylessMixedInput, ProxylessMixedLayer

# Run at both ends of the torch span too (make test-regression, make span).
pytestmark = pytest.mark.regression

TOLERANCE = dict(rtol=1e-5, atol=1e-7)


def linear_layer(n: int = 3, dim: int = 4, label='op', cls=ProxylessMixedLayer, seed: int = 0, extra=()):
    torch.manual_seed(seed)
    paths = [(f'c{k}', nn.Linear(dim, dim)) for k in range(n)] + list(extra)
    return cls(paths, nn.Parameter(torch.randn(len(paths))), nn.Softmax(-1), label)


def reference_alpha_grad(layer, calls) -> torch.Tensor:
    """sum over calls of the binary-gate alpha gradient, in float64.

    ``calls``: ``(args, dL/dy)`` per call, where ``dL/dy`` is the gradient at the sampled output.
    """
    model = copy.deepcopy(layer).double()
    alpha = model._arch_alpha.detach().double()
    p = torch.softmax(alpha, -1)
    total = torch.zeros_like(alpha)
    with torch.no_grad():
        for args, grad in calls:
            args = [a.detach().double() if isinstance(a, torch.Tensor) else a for a in args]
            b = torch.stack([(model.forward_path(k, *args) * grad.double()).sum() for k in range(len(alpha))])
            total += p * (b - (b * p).sum())
    return total.to(layer._arch_alpha.dtype)


# --- regressions against NNI 2.10 -------------------------------------------------------------


class MultiInput(nn.Module):
    """NNI's own multi-input candidate: some inputs are None, and so are those outputs."""

    def __init__(self, dim: int, scale: float):
        super().__init__()
        self.d = nn.Parameter(torch.randn(dim) * scale)

    def forward(self, q, k, v=None, mask=None):
        return q + self.d, 2 * k - 2 * self.d, v, mask


@requires_nni2
@pytest.mark.parametrize('with_v', [False, True])
def test_tuples_with_none_elements_train_like_nni(with_v):
    results = []
    for cls in (ProxylessMixedLayer, NNIMixedLayer):
        torch.manual_seed(0)
        layer = cls([(f'c{i}', MultiInput(4, i + 1.0)) for i in range(3)], nn.Parameter(torch.randn(3)),
                    nn.Softmax(-1), 'multi')
        layer.resample({'multi': 'c1'})
        torch.manual_seed(1)
        q, k = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
        v = torch.randn(2, 4, requires_grad=True) if with_v else None
        out = layer(q, k, v)
        assert out[3] is None and (out[2] is None) == (not with_v)
        loss = (out[0] * torch.arange(4.0)).sum() + out[1].square().sum() + (out[2].sum() if with_v else 0)
        loss.backward()
        results.append((layer._arch_alpha.grad, [p.grad for p in layer.parameters()], q.grad, k.grad))
    ours, theirs = results
    torch.testing.assert_close(ours[0], theirs[0], **TOLERANCE)
    for a, b in zip(ours[1], theirs[1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ours[2], theirs[2], rtol=0, atol=0)
    torch.testing.assert_close(ours[3], theirs[3], rtol=0, atol=0)


class Pair(NamedTuple):
    main: torch.Tensor
    side: torch.Tensor


class ReturnsContainer(nn.Module):
    def __init__(self, kind: str, scale: float):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.kind, self.scale = kind, scale

    def forward(self, x):
        y = self.linear(x) * self.scale
        if self.kind == 'namedtuple':
            return Pair(y, torch.tanh(y))
        if self.kind == 'ordereddict':
            return collections.OrderedDict([('main', y), ('side', torch.tanh(y)), ('note', 'kept')])
        if self.kind == 'list-with-none':
            return [y, None, torch.tanh(y)]
        raise AssertionError(self.kind)


@pytest.mark.parametrize('kind, expected_type', [('namedtuple', Pair), ('ordereddict', collections.OrderedDict),
                                                 ('list-with-none', list)])
def test_outputs_keep_their_container_type_and_get_the_reference_gradient(kind, expected_type):
    torch.manual_seed(0)
    layer = ProxylessMixedLayer([(f'c{i}', ReturnsContainer(kind, 1.0 + i)) for i in range(3)],
                                nn.Parameter(torch.randn(3)), nn.Softmax(-1), 'op')
    layer.resample({'op': 'c2'})
    x = torch.randn(5, 4)
    out = layer(x)
    assert type(out) is expected_type
    if kind == 'ordereddict':
        assert list(out) == ['main', 'side', 'note'] and out['note'] == 'kept'
    tensors = [t for t in (out.values() if isinstance(out, dict) else out) if isinstance(t, torch.Tensor)]
    weights = [torch.randn_like(t) for t in tensors]
    sum((t * w).sum() for t, w in zip(tensors, weights)).backward()

    # The reference: each candidate's tensors dotted with the gradients they got.
    model = copy.deepcopy(layer).double()
    p = torch.softmax(layer._arch_alpha.detach().double(), -1)
    with torch.no_grad():
        b = []
        for k in range(3):
            out_k = model.forward_path(k, x.double())
            items = [t for t in (out_k.values() if isinstance(out_k, dict) else out_k) if isinstance(t, torch.Tensor)]
            b.append(sum((t * w.double()).sum() for t, w in zip(items, weights)))
        b = torch.stack(b)
    torch.testing.assert_close(layer._arch_alpha.grad, (p * (b - (b * p).sum())).float(), **TOLERANCE)


class UsesFields(nn.Module):
    """A candidate that reads its namedtuple input by field name (it fails on a plain tuple)."""

    def __init__(self, scale: float):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.scale = scale

    def forward(self, pair, extra=None):
        y = self.linear(pair.main) * self.scale + pair.side
        return y if extra is None else y + extra['bias']


def test_namedtuple_and_ordereddict_inputs_reach_the_other_candidates_as_themselves():
    torch.manual_seed(0)
    layer = ProxylessMixedLayer([(f'c{i}', UsesFields(1.0 + i)) for i in range(3)], nn.Parameter(torch.randn(3)),
                                nn.Softmax(-1), 'op')
    layer.resample({'op': 'c0'})
    pair = Pair(torch.randn(2, 4), torch.randn(2, 4))
    extra = collections.OrderedDict(bias=torch.randn(4))
    out = layer(pair, extra=extra)
    grad = torch.randn_like(out)
    out.backward(grad)  # NNI 2.10 hands the other candidates a plain tuple: AttributeError here
    model = copy.deepcopy(layer).double()
    p = torch.softmax(layer._arch_alpha.detach().double(), -1)
    with torch.no_grad():
        pair64, extra64 = Pair(pair.main.double(), pair.side.double()), {'bias': extra['bias'].double()}
        b = torch.stack([(model.forward_path(k, pair64, extra=extra64) * grad.double()).sum() for k in range(3)])
    torch.testing.assert_close(layer._arch_alpha.grad, (p * (b - (b * p).sum())).float(), **TOLERANCE)


def test_in_place_op_on_the_output_is_refused_in_backward():
    layer = linear_layer()
    layer.resample({'op': 'c1'})
    x = torch.randn(2, 4)
    y = layer(x)
    y += x  # a residual written in place: the saved output no longer holds what c1 computed
    with pytest.raises(RuntimeError, match=r"ProxylessMixedLayer 'op': its output was modified in place after the "
                                           r"forward.*Use the out-of-place form"):
        y.square().sum().backward()


def test_in_place_op_on_an_identity_output_gets_the_reference_gradient():
    layer = linear_layer(extra=[('skip', nn.Identity())])
    layer.resample({'op': 'skip'})
    x = torch.randn(2, 4, requires_grad=True)
    h = x * 1.0  # a non-leaf input, as inside a network
    y = layer(h)
    assert y is not h
    y += h  # y = 2h afterwards; the gate of `skip` must see y = h
    y.square().sum().backward()
    # dL/dy at y = h (the gradient before the in-place op) is 2 * (2h): L = sum((y + h)^2).
    expected = reference_alpha_grad(layer, [((h,), 2 * (2 * h.detach()))])
    torch.testing.assert_close(layer._arch_alpha.grad, expected, **TOLERANCE)
    torch.testing.assert_close(x.grad, 8 * h.detach(), rtol=0, atol=0)


def test_in_place_op_on_a_saved_input_is_refused():
    layer = linear_layer(extra=[('skip', nn.Identity())])
    layer.resample({'op': 'skip'})
    h = torch.randn(2, 4, requires_grad=True) * 1.0
    y = layer(h)
    h.mul_(3)  # the other candidates would be evaluated on 3h
    with pytest.raises(RuntimeError, match=r"'op': one of its inputs was modified in place after the forward"):
        y.sum().backward()


class InPlaceFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(torch.relu_(x))


def test_candidate_modifying_its_input_in_place_is_refused_at_forward():
    layer = linear_layer(extra=[('inplace', InPlaceFirst())])
    layer.resample({'op': 'inplace'})
    with pytest.raises(RuntimeError, match=r"ProxylessMixedLayer 'op': the sampled candidate 'inplace' \(index 3\) "
                                           r"modified its input in place"):
        layer(torch.randn(2, 4, requires_grad=True) * 1.0)
    with proxyless_rs.no_arch_grad(layer):  # nothing is saved, so nothing can go wrong
        layer(torch.randn(2, 4, requires_grad=True) * 1.0).sum().backward()


@requires_nni2
def test_integer_labels_work_like_nni():
    grads = []
    for cls in (ProxylessMixedLayer, NNIMixedLayer):
        layer = linear_layer(label=5, cls=cls)
        assert layer.resample({5: 'c2'}) == {5: 'c2'}
        torch.manual_seed(3)
        layer(torch.randn(2, 4)).square().sum().backward()
        grads.append(layer._arch_alpha.grad)
        assert layer.export({}) in ({5: 'c0'}, {5: 'c1'}, {5: 'c2'})
    torch.testing.assert_close(grads[0], grads[1], **TOLERANCE)
    with pytest.raises(ValueError, match=r"ProxylessMixedLayer 5: memo chose 'c9'"):
        linear_layer(label=5).resample({5: 'c9'})


# --- per-call saved state ----------------------------------------------------------------------


def test_second_call_discarded():
    layer = linear_layer()
    layer.resample({'op': 'c0'})
    x1, x2 = torch.randn(2, 4), torch.randn(2, 4)
    y1 = layer(x1)
    layer(x2)  # its output is discarded: NNI would pop this call's state for y1's backward
    grad = torch.randn(2, 4)
    y1.backward(grad)
    torch.testing.assert_close(layer._arch_alpha.grad, reference_alpha_grad(layer, [((x1,), grad)]), **TOLERANCE)


def test_calls_back_propagated_in_forward_order():
    layer = linear_layer()
    layer.resample({'op': 'c1'})
    x1, x2 = torch.randn(2, 4), torch.randn(2, 4)
    y1, y2 = layer(x1), layer(x2)
    g1, g2 = torch.randn(2, 4), torch.randn(2, 4)
    y1.backward(g1)  # first call first: the reverse of what a stack assumes
    y2.backward(g2)
    expected = reference_alpha_grad(layer, [((x1,), g1), ((x2,), g2)])
    torch.testing.assert_close(layer._arch_alpha.grad, expected, **TOLERANCE)


class Block(nn.Module):
    """A mixed layer called twice, between plain layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.mixed = linear_layer(seed=1)

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        return self.mixed(torch.tanh(self.mixed(h))) + h


def early_stopping(early_stop: bool):
    """torch.utils.checkpoint's early stop (torch 2.1 on); torch 2.0's recomputation has none."""
    if hasattr(checkpoint, 'set_checkpoint_early_stop'):
        return checkpoint.set_checkpoint_early_stop(early_stop)
    if early_stop:
        pytest.skip("torch 2.0's torch.utils.checkpoint has no early stop")
    return contextlib.nullcontext()


@pytest.mark.parametrize('reentrant', [True, False])
@pytest.mark.parametrize('early_stop', [True, False])
def test_activation_checkpointing_gives_the_gradient_of_the_plain_run(reentrant, early_stop):
    grads = {}
    for how in ('plain', 'checkpoint'):
        torch.manual_seed(0)
        block = Block()
        block.mixed.resample({'op': 'c2'})
        x = torch.randn(3, 4, requires_grad=True)
        with early_stopping(early_stop):
            if how == 'plain':
                out = block(x)
            else:
                out = checkpoint.checkpoint(block, x, use_reentrant=reentrant)
            out.square().sum().backward()
        # The saved forwards are freed by the backward that consumes them, on every torch of the span
        # (where torch cannot say whether a backward keeps its graph, at the end of the backward).
        assert len(block.mixed.ctx) == 0
        del out
        assert len(block.mixed.ctx) == 0
        grads[how] = (block.mixed._arch_alpha.grad, [p.grad for p in block.parameters()], x.grad)
    torch.testing.assert_close(grads['checkpoint'][0], grads['plain'][0], **TOLERANCE)
    for a, b in zip(grads['checkpoint'][1], grads['plain'][1]):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grads['checkpoint'][2], grads['plain'][2])

    # The plain run against the float64 reference: two calls, on h and on tanh(mixed(h)).
    torch.manual_seed(0)
    block = Block()
    block.mixed.resample({'op': 'c2'})
    x = torch.randn(3, 4)
    h = torch.tanh(block.stem(x)).detach().requires_grad_()
    inner = block.mixed.forward_path(2, h)
    a = torch.tanh(inner)
    outer = block.mixed.forward_path(2, a)
    loss = (outer + h).square().sum()
    g_outer, g_inner = torch.autograd.grad(loss, [outer, inner])
    expected = reference_alpha_grad(block.mixed, [((h.detach(),), g_inner), ((a.detach(),), g_outer)])
    torch.testing.assert_close(grads['plain'][0], expected, **TOLERANCE)


# --- libtorch errors ---------------------------------------------------------------------------


@pytest.mark.parametrize('mode', ['full', 'two'])
@pytest.mark.parametrize('bad', [[0.0, float('nan'), 0.0], [0.0, float('inf'), 0.0],
                                 [float('-inf')] * 3], ids=['nan', 'inf', 'all -inf'])
def test_alpha_without_a_distribution_at_resample_is_a_runtime_error_naming_the_layer(mode, bad):
    layer = linear_layer()
    layer.mode = mode
    with torch.no_grad():
        layer._arch_alpha.copy_(torch.tensor(bad))
    with pytest.raises(RuntimeError) as info:
        layer.resample({})
    message = str(info.value)
    assert message.startswith("ProxylessMixedLayer 'op': softmax(alpha) is not a probability distribution")
    assert '\n' not in message


class ShiftedSoftmax(nn.Module):
    """Not torch.nn.Softmax: the layer calls it, and libtorch's multinomial checks what it returns."""

    def forward(self, logits):
        return torch.softmax(logits, -1) - 0.6


def test_a_custom_softmax_giving_negative_probabilities_is_libtorchs_error_naming_the_layer():
    layer = ProxylessMixedLayer([('a', nn.Identity()), ('b', nn.Identity())], nn.Parameter(torch.zeros(2)),
                                ShiftedSoftmax(), 'op')
    with pytest.raises(RuntimeError) as info:
        layer.resample({})
    message = str(info.value)
    assert message.startswith("ProxylessMixedLayer 'op': probability tensor contains either `inf`, `nan`")
    assert 'Exception raised from' not in message and 'frame #' not in message and '\n' not in message


@pytest.mark.parametrize('mode', ['full', 'two'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_draws_follow_alpha_changed_in_place_between_them(mode, dtype):
    # A layer keeps softmax(alpha) and the exponential draws' buffer from one draw to the next
    # (src/arch/sampling.rs, DrawCache) while alpha holds the same values: each draw must still be
    # multinomial's on alpha as it is then, after steps that change alpha in place or leave it,
    # and after a change to values that hold no distribution.
    alpha = nn.Parameter(torch.tensor([0.3, -1.2, 2.0, 0.0, 0.7], dtype=dtype))
    layer = ProxylessMixedLayer([(str(k), nn.Identity()) for k in range(5)], alpha, nn.Softmax(-1), 'op',
                                mode=mode)
    optimizer = torch.optim.SGD([alpha], lr=0.5)
    generator = torch.Generator().manual_seed(0)
    for step in range(60):
        if step % 3:  # two steps of three change alpha, as an architecture step does
            alpha.grad = torch.randn(5, generator=generator, dtype=dtype)
            optimizer.step()
        probs = torch.softmax(alpha.detach(), -1)
        torch.manual_seed(step)
        if mode == 'full':
            expected = torch.multinomial(probs, 1).item()
        else:
            first, second = torch.multinomial(probs, 2).tolist()
            pick = torch.multinomial(torch.softmax(alpha.detach()[[first, second]], -1), 1).item()
            expected = first if pick == 0 else second
        torch.manual_seed(step)
        assert layer.resample({}) == {'op': str(expected)}, step
    with torch.no_grad():
        alpha[1] = float('nan')
    with pytest.raises(RuntimeError, match='not a probability distribution'):
        layer.resample({})


@pytest.mark.parametrize('layout', ['contiguous', 'strided'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('n', [2, 3, 7, 20])
def test_draws_are_torch_multinomials_under_the_same_seed(n, dtype, layout):
    # The layer draws with multinomial's own algorithm (src/arch/sampling.rs), not multinomial itself:
    # the same index, and the generator left in the same state, in both modes. A strided alpha takes
    # the path of an alpha on a GPU (softmax and exponential draws in one buffer, one copy to the host).
    generator = torch.Generator().manual_seed(n)
    for seed in range(50):
        alpha = torch.randn(n, generator=generator, dtype=dtype) * 3
        param = alpha.clone() if layout == 'contiguous' else alpha.repeat_interleave(2)[::2]
        assert param.is_contiguous() == (layout == 'contiguous') and torch.equal(param, alpha)
        layer = ProxylessMixedLayer([(str(k), nn.Identity()) for k in range(n)], nn.Parameter(param),
                                    nn.Softmax(-1), 'op')
        probs = torch.softmax(alpha, -1)
        torch.manual_seed(seed)
        expected, after = torch.multinomial(probs, 1).item(), torch.rand(3)
        torch.manual_seed(seed)
        assert layer.ctx.resample() == expected
        assert torch.equal(torch.rand(3), after)
        # Two-path: two distinct candidates, then the active one of the pair.
        layer.mode = 'two'
        torch.manual_seed(seed)
        first, second = torch.multinomial(probs, 2).tolist()
        pick = torch.multinomial(torch.softmax(alpha[[first, second]], -1), 1).item()
        after = torch.rand(3)
        torch.manual_seed(seed)
        active = layer.ctx.resample()
        assert (active, layer.ctx.partner_of(active)) == ((first, second) if pick == 0 else (second, first))
        assert torch.equal(torch.rand(3), after)


def test_integer_alpha_is_refused_at_construction():
    with pytest.raises(TypeError, match='arch_alpha must be a floating-point tensor'):
        ProxylessMixedLayer([('a', nn.Identity()), ('b', nn.Identity())], torch.zeros(2, dtype=torch.int64),
                            nn.Softmax(-1), 'op')


class WrongShape(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 3)


def test_candidate_shape_mismatch_in_backward_is_a_runtime_error_naming_the_layer():
    layer = linear_layer(extra=[('bad', WrongShape())])
    layer.resample({'op': 'c0'})
    with pytest.raises(RuntimeError) as info:
        layer(torch.randn(2, 4)).sum().backward()
    message = str(info.value)
    assert message.startswith("ProxylessMixedLayer 'op': The size of tensor a (3) must match the size of tensor b (4)")
    assert 'Exception raised from' not in message and '\n' not in message


# --- the host gate loop reads memory as the tensor reads -----------------------------------------


class NegatedView(nn.Module):
    """A candidate returning a lazily negated view (its memory holds the values with the other sign)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        out = torch._neg_view(self.linear(x))
        assert out.is_neg()
        return out


def test_negated_view_outputs_get_the_right_sign():
    layer = linear_layer(extra=[('neg', NegatedView())])
    for sampled in ('c0', 'neg'):
        layer._arch_alpha.grad = None
        layer.resample({'op': sampled})
        x, grad = torch.randn(8, 4), torch.randn(8, 4)
        layer(x).backward(grad)
        torch.testing.assert_close(layer._arch_alpha.grad, reference_alpha_grad(layer, [((x,), grad)]), **TOLERANCE)


# --- tracing and compiling ---------------------------------------------------------------------


def test_tracing_and_scripting_are_refused_with_the_reason():
    layer = linear_layer()
    layer.resample({'op': 'c0'})
    with pytest.raises(RuntimeError, match=r"ProxylessMixedLayer 'op': torch.jit.trace cannot capture a ProxylessNAS "
                                           r"layer.*silently drop alpha's gradient"):
        torch.jit.trace(layer, torch.randn(2, 4), check_trace=False)
    with pytest.raises(RuntimeError, match=r"ProxylessMixedLayer 'op': torch.jit.script cannot capture"):
        torch.jit.script(nn.Sequential(nn.Linear(4, 4), layer))
    pick = ProxylessMixedInput(2, 1, nn.Parameter(torch.zeros(2)), nn.Softmax(-1), 'pick')
    pick.resample({})
    with pytest.raises(RuntimeError, match=r"ProxylessMixedInput 'pick': torch.jit.trace cannot capture"):
        torch.jit.trace(lambda a, b: pick([a, b]), (torch.randn(2), torch.randn(2)), check_trace=False)


@pytest.mark.skipif(TORCH_RELEASE < (2, 1) and sys.version_info >= (3, 11),
                    reason="torch 2.0's torch.compile does not run on Python 3.11 or newer")
def test_torch_compile_runs_the_layer_eagerly_and_fullgraph_is_refused_by_name():
    import torch._dynamo

    grads = []
    for compiled in (False, True):
        torch._dynamo.reset()
        layer = linear_layer()
        layer.resample({'op': 'c1'})
        run = torch.compile(layer, backend='eager') if compiled else layer
        x = torch.randn(2, 4)
        run(x).square().sum().backward()
        grads.append(layer._arch_alpha.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)

    torch._dynamo.reset()
    layer = linear_layer()
    layer.resample({'op': 'c1'})
    # Dynamo before torch 2.9 refuses a function marked like torch.compiler.disable's without reading
    # its reason, naming the disabling instead; from 2.9 on it gives the reason.
    reason = (r'proxyless_rs: a ProxylessNAS layer .*compile without fullgraph=True' if TORCH_RELEASE >= (2, 9) else
              r'torch\.compiler\.disable|torch\._dynamo\.disable|disable\(\)')
    with pytest.raises(Exception, match=reason):
        torch.compile(layer, backend='eager', fullgraph=True)(torch.randn(2, 4))


# --- the torch the core was built against ------------------------------------------------------


def test_built_torch_release_is_recorded_and_checked():
    from proxyless_rs import _core, _torch_check

    assert _core.TORCH_VERSION == torch.__version__
    assert _torch_check.built_against() == torch.__version__


# A release no build can be made against, whichever the core was built against.
OTHER_TORCH = '2.99.1+cpu'


def test_import_under_another_torch_release_fails_with_how_to_rebuild():
    script = textwrap.dedent(f'''
        import torch
        torch.__version__ = {OTHER_TORCH!r}
        try:
            import proxyless_rs
        except ImportError as err:
            print(err)
        else:
            print('imported')
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith(f'proxyless_rs was built against torch {torch.__version__}'), message
    assert f'torch {OTHER_TORCH} is installed' in message
    assert 'pip install --no-build-isolation --force-reinstall --no-deps .' in message
    assert f'+torch{torch.__version__.split(".")[0]}.{torch.__version__.split(".")[1]}' in message


def test_a_core_that_cannot_load_is_explained(monkeypatch):
    from proxyless_rs import _torch_check

    loader_error = ImportError('undefined symbol: _ZN3c104impl')
    built = _torch_check.built_against()
    monkeypatch.setattr(torch, '__version__', OTHER_TORCH)
    explained = _torch_check.explain_import_error(loader_error)
    assert str(explained).startswith(f'proxyless_rs was built against torch {built}')
    assert 'undefined symbol' in str(explained) and '--no-build-isolation' in str(explained)
    monkeypatch.setattr(torch, '__version__', built)
    assert _torch_check.explain_import_error(loader_error) is loader_error  # same release: another cause


# --- state with one owner ----------------------------------------------------------------------


def test_two_path_draws_live_on_the_shared_arch_parameter():
    alpha = nn.Parameter(torch.zeros(4))
    paths = lambda: [(f'c{k}', nn.Linear(2, 2)) for k in range(4)]  # noqa: E731
    first = ProxylessMixedLayer(paths(), alpha, nn.Softmax(-1), 'shared', mode='two')
    second = ProxylessMixedLayer(paths(), alpha, nn.Softmax(-1), 'shared', mode='two')
    assert first.ctx.arch is second.ctx.arch and first.ctx.arch.alpha is alpha
    memo = first.resample({})
    active, inactive = first.ctx.arch.pending
    assert memo == {'shared': f'c{active}'} and first._partner == inactive
    second.resample(memo)
    assert second._partner == inactive
    proxyless_rs.rescale_two_path(first, second)
    assert first.ctx.arch.pending is None


def test_an_in_place_op_on_one_of_several_outputs_is_refused_in_backward():
    torch.manual_seed(0)
    layer = ProxylessMixedLayer([(f'c{i}', ReturnsContainer('namedtuple', 1.0 + i)) for i in range(2)],
                                nn.Parameter(torch.randn(2)), nn.Softmax(-1), 'op')
    layer.resample({'op': 'c0'})
    out = layer(torch.randn(2, 4))
    out.main.add_(1)
    with pytest.raises(RuntimeError, match=r"ProxylessMixedLayer 'op': element 0 of its output was modified in place"):
        (out.main.sum() + out.side.sum()).backward()
