"""Value choices inside modules (NNI's mixed operations) under ProxylessNAS, under both NNI versions.

Where NNI has no counterpart (its ProxylessNAS refuses value choices), the alpha gradients are
compared with a float64 reference of the documented estimator (docs/value-choices.md), written here
without the implementation's code: for each operation call and each label, the operation evaluated
by NNI's own ``forward_with_args`` at every value of the label (the others at their draw) on the
call's input, fitted to the sampled output's shape (a prefix kept or zeros appended; a convolution's
spatial dims about the centre, or by nearest neighbour where the stride differs), dotted with the
gradient at the sampled output: ``b_k``; ``dL/dalpha = sum over calls of p * (b - <b, p>)``.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import proxyless_rs
from conftest import NNI3
from value_spaces import (
    Base,
    BatchNorm2d,
    Conv2d,
    LayerNorm,
    Linear,
    MultiheadAttention,
    choice,
    mixed_operations,
    resample,
    space,
    supernet,
)

# Run at both ends of the torch span too (make test-regression, make span).
pytestmark = pytest.mark.regression

warnings.filterwarnings('ignore', category=UserWarning)


# --- spaces -----------------------------------------------------------------------------------------

@space
class KernelSpace(Base):
    """A kernel size whose padding follows it: every value keeps the output's shape."""

    def __init__(self):
        super().__init__()
        ks = choice('ks', [1, 3, 5])
        self.conv = Conv2d(2, 3, kernel_size=ks, padding=ks // 2)

    def forward(self, x):
        return self.conv(x)


@space
class DilationSpace(Base):
    def __init__(self):
        super().__init__()
        d = choice('dilation', [1, 2, 3])
        self.conv = Conv2d(2, 3, kernel_size=3, dilation=d, padding=d)

    def forward(self, x):
        return self.conv(x)


@space
class WidthSpace(Base):
    """A width shared by a convolution's output, a BatchNorm and the next convolution's input, and a
    kernel size in the first convolution (two labels in one operation); values out of order."""

    def __init__(self):
        super().__init__()
        w = choice('width', [4, 8, 6])
        ks = choice('ks', [3, 5])
        self.conv = Conv2d(2, w, kernel_size=ks, padding=ks // 2)
        self.bn = BatchNorm2d(w)
        self.proj = Conv2d(w, 3, kernel_size=1)

    def forward(self, x):
        return self.proj(torch.relu(self.bn(self.conv(x))))


@space
class FixedPaddingSpace(Base):
    """A kernel size under a fixed padding: each value gives another spatial size (fitted about the centre)."""

    def __init__(self):
        super().__init__()
        self.conv = Conv2d(2, 3, kernel_size=choice('ks', [1, 3, 5]), padding=1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


@space
class StrideSpace(Base):
    """A stride: the outputs differ by a subsampling (fitted by nearest neighbour)."""

    def __init__(self):
        super().__init__()
        self.conv = Conv2d(2, 3, kernel_size=3, padding=1, stride=choice('stride', [1, 2]))

    def forward(self, x):
        return self.conv(x).amax((2, 3))


@space
class LinearSpace(Base):
    def __init__(self):
        super().__init__()
        h = choice('hidden', [4, 8, 6])
        self.up = Linear(5, h)
        self.norm = LayerNorm(h)
        self.down = Linear(h, 3)

    def forward(self, x):
        return self.down(torch.tanh(self.norm(self.up(x))))


@space
class AttentionSpace(Base):
    def __init__(self):
        super().__init__()
        e = choice('embed', [8, 16])
        self.inp = Linear(5, e)
        self.attn = MultiheadAttention(e, choice('heads', [2, 4]))
        self.out = Linear(e, 3)

    def forward(self, x):  # x: (length, batch, 5)
        h = self.inp(x)
        a, _ = self.attn(h, h, h)
        return self.out(a + h)


IMAGE = (4, 2, 7, 7)
SPACES = {
    'kernel': (KernelSpace, IMAGE, {'ks': 3}),
    'dilation': (DilationSpace, IMAGE, {'dilation': 2}),
    'width': (WidthSpace, IMAGE, {'width': 6, 'ks': 5}),
    'fixed-padding': (FixedPaddingSpace, IMAGE, {'ks': 3}),
    'stride': (StrideSpace, IMAGE, {'stride': 2}),
    'linear': (LinearSpace, (6, 5), {'hidden': 6}),
    'attention': (AttentionSpace, (4, 3, 5), {'embed': 8, 'heads': 4}),
}


def build(name: str, mode: str = 'full', seed: int = 0) -> nn.Module:
    cls = SPACES[name][0]
    torch.manual_seed(seed)
    return supernet(cls(), mode=mode, seed=seed)


# --- the float64 reference ------------------------------------------------------------------------

def compose(expression, leaves):
    """An argument's value from the labels' values, by NNI's own code."""
    if NNI3:
        return expression.freeze(dict(leaves))
    from nni.nas.oneshot.pytorch.supermodule._valuechoice_utils import evaluate_value_choice_with_dict

    return evaluate_value_choice_with_dict(expression, dict(leaves))


def resize(t: torch.Tensor, dim: int, size: int, how: str) -> torch.Tensor:
    """``t`` with dim ``dim`` of length ``size``: the documented fit, written out by hand."""
    n = t.shape[dim]
    if n == size:
        return t
    moved = t.movedim(dim, 0)
    if how == 'nearest':
        rows = [moved[i * n // size] for i in range(size)]
        return torch.stack(rows).movedim(0, dim)
    out = moved.new_zeros((size, *moved.shape[1:]))
    if n > size:
        start = (n - size) // 2 if how == 'center' else 0
        out[:] = moved[start:start + size]
    else:
        start = (size - n) // 2 if how == 'center' else 0
        out[start:start + n] = moved
    return out.movedim(0, dim)


def input_sizes(operation, arguments) -> dict[int, dict[int, int]]:
    name = type(operation).__name__
    if name == 'MixedConv2d':
        return {0: {1: arguments['in_channels']}}
    if name == 'MixedBatchNorm2d':
        return {0: {1: arguments['num_features']}}
    if name == 'MixedLinear':
        return {0: {-1: arguments['in_features']}}
    if name == 'MixedLayerNorm':
        shape = arguments['normalized_shape']
        return {0: {-1: shape if isinstance(shape, int) else shape[0]}}
    if name == 'MixedMultiHeadAttention':
        return {i: {-1: arguments['embed_dim']} for i in range(3)}
    raise AssertionError(name)


def value_output(operation, leaves, args):
    arguments = {name: compose(operation.mutable_arguments[name], leaves) if name in operation.mutable_arguments
                 else operation.init_arguments[name] for name in operation.argument_list}
    args = list(args)
    for i, dims in input_sizes(operation, arguments).items():
        for dim, size in dims.items():
            args[i] = resize(args[i], dim, size, 'prefix')
    out = operation.forward_with_args(*[arguments[n] for n in operation.argument_list], *args)
    return out, arguments


def reference_alpha_grads(model: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                          memo: dict) -> dict[str, torch.Tensor]:
    """The estimator's alpha gradient of each label, in float64, for ``loss = sum(model(x) * weight)``."""
    model = copy.deepcopy(model).double()
    resample(model, memo)
    calls = []

    def record(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        out.retain_grad()
        calls.append((module, tuple(a.detach() for a in args), out))

    operations = mixed_operations(model)
    handles = [op.register_forward_hook(record) for op in operations]
    with proxyless_rs.no_arch_grad(model):
        (model(x.double()) * weight.double()).sum().backward()
    for handle in handles:
        handle.remove()
    grads: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for op, args, out in calls:
            policy = op.sampling_policy
            drawn = {label: site.names[site.index] for label, site in policy.sites.items()}
            sampled_stride = value_output(op, drawn, args)[1].get('stride')
            for label, site in policy.sites.items():
                b = []
                for value in site.names:
                    o, arguments = value_output(op, {**drawn, label: value}, args)
                    o = o[0] if isinstance(o, tuple) else o
                    for dim in range(o.dim()):
                        spatial = type(op).__name__ == 'MixedConv2d' and dim >= 2
                        how = ('nearest' if arguments.get('stride') != sampled_stride else 'center') if spatial \
                            else 'prefix'
                        o = resize(o, dim, out.shape[dim], how)
                    b.append((o * out.grad).sum())
                b = torch.stack(b)
                p = torch.softmax(op._arch_alpha[label].detach().double(), -1)
                grads[label] = grads.get(label, 0) + p * (b - (b * p).sum())
    return grads


@pytest.mark.parametrize('name', list(SPACES))
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_alpha_gradients_are_the_estimators_float64_reference(name, dtype):
    _, shape, memo = SPACES[name]
    model = build(name).to(dtype)
    torch.manual_seed(1)
    x, weight = torch.randn(shape, dtype=dtype), None
    reference_model = copy.deepcopy(model)
    assert resample(model, memo) == memo
    out = model(x)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    expected = reference_alpha_grads(reference_model, x, weight, memo)
    labels = {label for op in mixed_operations(model) for label in op.sampling_policy.sites}
    assert set(expected) == labels == set(memo)
    tolerance = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    for op in mixed_operations(model):
        for label in op.sampling_policy.sites:
            ours = op._arch_alpha[label].grad
            assert ours is not None, label
            torch.testing.assert_close(ours.double(), expected[label], **tolerance, msg=f'{name}: {label}')
    # The gradient is not trivially zero: the values compete.
    assert max(float(g.abs().max()) for g in expected.values()) > 1e-6


def test_a_label_shared_by_several_operations_is_drawn_once_and_sums_their_gates():
    model = build('width')
    draws = [resample(model) for _ in range(20)]
    ops = mixed_operations(model)
    for draw in draws[-1:]:
        widths = {op.sampling_policy.sites['width'].names[op.sampling_policy.sites['width'].index] for op in ops
                  if 'width' in op.sampling_policy.sites}
        assert widths == {draw['width']}  # one value in every operation of the label
    assert {d['width'] for d in draws} == {4, 6, 8}
    alphas = {id(op._arch_alpha['width']) for op in ops if 'width' in op.sampling_policy.sites}
    assert len(alphas) == 1  # one alpha, shared (its gradient sums the operations')


def test_the_forward_runs_the_drawn_configuration_only():
    model = build('width')
    resample(model, {'width': 4, 'ks': 3})
    calls = []
    for op in mixed_operations(model):
        op.register_forward_hook(lambda m, a, o: calls.append((type(m).__name__, tuple(o.shape))))
    model(torch.randn(IMAGE))
    assert calls == [('MixedConv2d', (4, 4, 7, 7)), ('MixedBatchNorm2d', (4, 4, 7, 7)), ('MixedConv2d', (4, 3, 7, 7))]


def test_export_is_the_most_probable_value_and_freeze_gives_the_supernets_outputs():
    model = build('width')
    with torch.no_grad():
        model.conv._arch_alpha['width'].copy_(torch.tensor([0.0, 2.0, 1.0]))
        model.conv._arch_alpha['ks'].copy_(torch.tensor([1.0, 0.0]))
    from proxyless_rs.child import _export

    architecture = _export(model)
    assert architecture == {'width': 8, 'ks': 3}
    child = proxyless_rs.freeze(model, architecture)
    assert [type(m) for m in child.children()] == [nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]
    assert child.conv.weight.shape == (8, 2, 3, 3) and child.proj.weight.shape == (3, 8, 1, 1)
    model.eval()
    child.eval()
    resample(model, architecture)
    x = torch.randn(IMAGE)
    with torch.no_grad():
        assert torch.equal(child(x), model(x))
    # Not a view of the supernet's weights: a copy.
    assert child.conv.weight.data_ptr() != model.conv.weight.data_ptr()


def test_two_path_mode_evaluates_the_partner_only_and_moves_two_logits():
    model = build('kernel', mode='two')
    ops = mixed_operations(model)
    site = ops[0].sampling_policy.sites['ks']
    assert site.mode == 'two'
    torch.manual_seed(3)
    memo = resample(model)
    pending = site.ctx.arch.pending
    assert pending is not None and site.names[pending[0]] == memo['ks']
    evaluated = []
    original = type(ops[0]).forward_with_args
    ops[0].forward_with_args = lambda *a, **k: (evaluated.append(a[2]), original(ops[0], *a, **k))[1]
    model(torch.randn(IMAGE)).square().sum().backward()
    grad = ops[0]._arch_alpha['ks'].grad
    assert evaluated[1:] == [site.names[pending[1]]]  # the forward, then the partner only
    others = [i for i in range(3) if i not in pending]
    assert grad[others].abs().max() == 0 and grad[list(pending)].abs().max() > 0
    before = ops[0]._arch_alpha['ks'].detach().clone()
    with torch.no_grad():
        ops[0]._arch_alpha['ks'] -= 0.5 * grad + 0.1  # an optimizer step that also moves the others
    proxyless_rs.rescale_two_path(model)
    after = ops[0]._arch_alpha['ks'].detach()
    assert torch.equal(after[others], before[others])
    i, j = pending
    assert math.isclose(float(before[i].exp() + before[j].exp()), float(after[i].exp() + after[j].exp()), rel_tol=1e-6)


def test_no_arch_grad_and_no_weight_grad_cover_value_choices():
    model = build('width')
    resample(model, {'width': 8, 'ks': 3})
    with proxyless_rs.no_arch_grad(model):
        model(torch.randn(IMAGE)).sum().backward()
    assert all(p.grad is None for op in mixed_operations(model) for p in op._arch_alpha.values())
    assert model.conv.weight.grad is not None
    model.zero_grad(set_to_none=True)
    with proxyless_rs.no_weight_grad(model):
        model(torch.randn(IMAGE)).sum().backward()
    assert model.conv.weight.grad is None and model.conv._arch_alpha['width'].grad is not None


def test_an_in_place_activation_after_an_operation_is_recomputed_not_refused():
    @space
    class InPlace(Base):
        def __init__(self):
            super().__init__()
            ks = choice('ks', [1, 3])
            self.conv = Conv2d(2, 3, kernel_size=ks, padding=ks // 2)

        def forward(self, x):
            return F.relu(self.conv(x), inplace=True)

    torch.manual_seed(0)
    model = supernet(InPlace())
    reference = copy.deepcopy(model)
    resample(model, {'ks': 3})
    x = torch.randn(IMAGE)
    model(x).sum().backward()
    # The same without the in-place op: the gate of the sampled value used the conv's own output.
    resample(reference, {'ks': 3})
    torch.relu(reference.conv(x)).sum().backward()
    torch.testing.assert_close(model.conv._arch_alpha['ks'].grad, reference.conv._arch_alpha['ks'].grad)


def test_a_value_not_among_the_choices_is_refused_by_name():
    model = build('kernel')
    with pytest.raises(ValueError, match=r"MixedConv2d .*\(value choice 'ks'\): the architecture chose 4, which is "
                                         r"not one of its values \[1, 3, 5\]"):
        resample(model, {'ks': 4})
    with pytest.raises(ValueError, match=r"value choice 'ks'.*chose 4"):
        proxyless_rs.freeze(model, {'ks': 4})
    with pytest.raises(KeyError, match=r"value choice 'ks'.*has no value for 'ks'"):
        proxyless_rs.freeze(model, {})


# --- tasks with a known right answer ----------------------------------------------------------------

@pytest.mark.parametrize('task', ['kernel', 'dilation', 'cell'])
def test_a_short_search_exports_the_value_that_made_the_data(task):
    """benchmarks/value_choices.py's tasks (a teacher convolution of kernel size 5 among 1/3/5, of
    dilation 2 among 1/2/3; a cell of one node whose teacher is a 5x5 convolution of the first of
    its two inputs): from uniform alphas, nearly every seed exports the true choices."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'benchmarks'))
    from value_choices import TASKS, search

    truth = TASKS[task][1]
    exported = [search('proxyless', task, seed) for seed in range(10)]
    assert sum(value == truth for value in exported) >= 9, exported


# --- after the search: costs, the k best, the constrained export -------------------------------------

def test_counted_parameters_of_value_choices_add_up_over_the_operations():
    model = build('width')  # conv(2 -> width, ks) + BatchNorm(width) + conv(width -> 3, 1)
    table = proxyless_rs.count_costs(model, torch.randn(IMAGE), costs=('params',))
    assert set(table['params']) == {'width', 'ks'} and set(table['params']['width']) == {'4', '8', '6'}

    def conv(width, ks):
        return width * 2 * ks * ks + width

    for width in (4, 8, 6):
        for ks in (3, 5):
            architecture = {'width': width, 'ks': ks}
            predicted = proxyless_rs.predicted_costs(architecture, model, table)['params']
            # The convolution has two value choices: first order about their first values (width 4, ks 3);
            # the BatchNorm and the projection one each: exact.
            assert predicted == pytest.approx(conv(width, 3) + conv(4, ks) - conv(4, 3) + 2 * width + 3 * width + 3)
            child = proxyless_rs.freeze(model, architecture)
            if width == 4 or ks == 3:
                assert predicted == pytest.approx(sum(p.numel() for p in child.parameters()))


def test_the_k_best_and_the_constrained_export_rank_value_choices_exactly():
    import itertools

    model = build('width')
    with torch.no_grad():
        model.conv._arch_alpha['width'].copy_(torch.tensor([0.3, 1.0, -0.2]))
        model.conv._arch_alpha['ks'].copy_(torch.tensor([0.5, 0.1]))
    table = proxyless_rs.count_costs(model, torch.randn(IMAGE), costs=('params',))
    probs = {label: torch.softmax(model.conv._arch_alpha[label].detach().double(), -1).tolist()
             for label in ('width', 'ks')}
    every = []
    for (i, width), (j, ks) in itertools.product(enumerate([4, 8, 6]), enumerate([3, 5])):
        architecture = {'width': width, 'ks': ks}
        cost = proxyless_rs.predicted_costs(architecture, model, table)['params']
        every.append((probs['width'][i] * probs['ks'][j], architecture, cost))
    every.sort(key=lambda entry: -entry[0])
    ranked = proxyless_rs.top_architectures(model, 6, table=table)
    assert [r.architecture for r in ranked] == [a for _, a, _ in every]
    for r, (p, _, cost) in zip(ranked, every):
        assert math.isclose(r.probability, p, rel_tol=1e-9) and r.costs['params'] == pytest.approx(cost)
    limit = sorted(cost for _, _, cost in every)[2]
    best = next(a for _, a, cost in every if cost <= limit)
    assert proxyless_rs.constrained_export(model, table, limit) == best
