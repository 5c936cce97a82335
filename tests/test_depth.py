"""Depths that are expressions of one label (NNI's NDS stages with ``num_cells`` a tuple), under both
NNI versions: one choice shared by every repeat that reads it, one draw per step.

NNI has no ProxylessNAS counterpart (NNI 3.0 weighs every depth, DARTS's way, NNI 2.10 refuses the
expression), so the alpha gradient is compared with a float64 reference of the binary-gate formula
written out here: for each repeat, its output at each value's depth on its saved input, dotted
with the gradient at its output, summed over the repeats; ``dL/dalpha = p * (b - <b, p>)``. The
first repeat aligns a one-block depth's passed-on input as NNI's ``NDSStage`` does
(``first_cell_transformation``).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import proxyless_rs
from conftest import NNI3
from value_spaces import Base, Repeat, choice, resample, space, supernet

warnings.filterwarnings('ignore', category=UserWarning)

pytestmark = pytest.mark.regression


class Block(nn.Module):
    """An NDS-like cell on ``(previous, current)``: returns ``(current, f(current))``; block 0 widens."""

    def __init__(self, index: int, width_in: int = 4, width: int = 6):
        super().__init__()
        self.linear = nn.Linear(width_in if index == 0 else width, width)

    def forward(self, x):
        previous, current = x
        return current, torch.tanh(self.linear(current))


class AlignedRepeat(Repeat):
    """A ``Repeat`` with NNI's ``NDSStage`` alignment: a one-block depth passes the stage's own input on."""

    def first_cell_transformation_factory(self) -> nn.Module:
        return nn.Linear(4, 6)


@space
class DepthSpace(Base):
    def __init__(self):
        super().__init__()
        depth = choice('depth', [2, 4, 6])
        self.first = AlignedRepeat(lambda i: Block(i), depth // 2)  # 1, 2 or 3 blocks
        self.second = Repeat(lambda i: Block(i, 6), depth - 1)  # 1, 3 or 5 blocks
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        y = self.second(self.first((x, x)))
        return self.head(torch.cat(y, -1))


def build(mode: str = 'full') -> nn.Module:
    torch.manual_seed(0)
    return supernet(DepthSpace(), mode=mode)


def test_a_depth_expression_is_one_choice_shared_by_its_repeats():
    model = build()
    depths = [m for m in model.modules() if isinstance(m, proxyless_rs._depth.ProxylessDepth)]
    assert [type(m).__name__ for m in depths] == ['ProxylessMixedDepth'] * 2
    assert [m.depths for m in depths] == [[1, 2, 3], [1, 3, 5]]
    sites = list(proxyless_rs._choices.choices(model))
    assert [s.label for s in sites] == ['depth', 'depth']
    assert len(proxyless_rs._choices.unique_arch_parameters(sites)) == 1
    assert depths[0].first_cell_transformation is not None and depths[1].first_cell_transformation is None
    for _ in range(5):  # one draw per step: the second repeat reads the first's
        memo = resample(model)
        assert depths[0]._choice.index == depths[1]._choice.index == sites[0].names.index(memo['depth'])


def reference_alpha_grad(model: nn.Module, x: torch.Tensor, weight: torch.Tensor, depth: int) -> torch.Tensor:
    """The binary-gate alpha gradient of the label, in float64, by hand."""
    model = copy.deepcopy(model).double()
    first, second = model.first, model.second
    k = first._choice.index_of(depth)
    x = x.double()
    with proxyless_rs.no_arch_grad(model):
        y1 = first.run_to_depth(k, (x, x))
        y1_leaf = tuple(t.detach().requires_grad_() for t in y1)
        y2 = second.run_to_depth(k, y1_leaf)
        y2_leaf = tuple(t.detach().requires_grad_() for t in y2)
        (model.head(torch.cat(y2_leaf, -1)) * weight.double()).sum().backward()
        torch.autograd.backward(y2, [t.grad for t in y2_leaf])
    def dot(outputs, leaves):  # an output no later block reads has no gradient: zero
        return sum((a * g.grad).sum() for a, g in zip(outputs, leaves) if g.grad is not None)

    with torch.no_grad():
        b = torch.stack([dot(first.run_to_depth(j, (x, x)), y1_leaf) + dot(second.run_to_depth(j, y1_leaf), y2_leaf)
                         for j in range(len(first.depths))])
    p = torch.softmax(first._arch_alpha['depth'].detach().double(), -1)
    return p * (b - (b * p).sum())


@pytest.mark.parametrize('depth', [2, 4, 6])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_the_depth_gradient_is_the_float64_reference(depth, dtype):
    model = build().to(dtype)
    reference_model = copy.deepcopy(model)
    torch.manual_seed(1)
    x = torch.randn(5, 4, dtype=dtype)
    assert resample(model, {'depth': depth}) == {'depth': depth}
    out = model(x)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    ours = model.first._arch_alpha['depth'].grad
    expected = reference_alpha_grad(reference_model, x, weight, depth)
    tolerance = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours.double(), expected, **tolerance)
    assert float(expected.abs().max()) > 1e-6
    # The forward ran the drawn depth only: the blocks beyond it got no weight gradient.
    drawn = model.second.depth_at(depth)
    assert all(b.linear.weight.grad is None for b in model.second.blocks[drawn:])
    assert all(b.linear.weight.grad is not None for b in model.second.blocks[:drawn])


@pytest.mark.parametrize('depth', [2, 6])
def test_the_depth_exports_and_freezes_into_its_child(depth):
    model = build()
    architecture = {'depth': depth}
    child = proxyless_rs.freeze(model, architecture)
    aligned = depth == 2
    assert isinstance(child.first, proxyless_rs.child.ChosenDepth) == aligned
    assert len(child.first.blocks if aligned else child.first) == model.first.depth_at(depth)
    assert len(child.second) == model.second.depth_at(depth)
    assert not any(isinstance(m, proxyless_rs._depth.ProxylessDepth) for m in child.modules())
    resample(model, architecture)
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(child(x), model(x))
        # traceable (torch 2.0's JIT may fuse the tanh: equal to float rounding)
        torch.testing.assert_close(torch.jit.trace(child, x)(x), model(x))
    # The export is the most probable value (the first of equals).
    with torch.no_grad():
        model.first._arch_alpha['depth'].copy_(torch.tensor([0.0, 1.0, 1.0]))
    assert proxyless_rs.child._export(model) == {'depth': 4}
    # NNI's own freeze of the space takes the export.
    if NNI3:
        frozen = DepthSpace().freeze({'depth': depth})
    else:
        from nni.retiarii import fixed_arch

        with fixed_arch({'depth': depth}):
            frozen = DepthSpace()
    assert len(frozen.second) == model.second.depth_at(depth)


def test_two_path_mode_moves_two_logits():
    model = build(mode='two')
    torch.manual_seed(2)
    resample(model)
    model(torch.randn(3, 4)).sum().backward()
    site = model.first._choice
    pending = site.ctx.arch.pending
    grad = model.first._arch_alpha['depth'].grad
    assert pending is not None and grad is not None
    (other,) = [i for i in range(3) if i not in pending]
    assert grad[other] == 0 and grad[list(pending)].abs().max() > 0


def test_a_depth_of_two_labels_is_refused_naming_the_repeat():
    @space
    class TwoLabels(Base):
        def __init__(self):
            super().__init__()
            self.blocks = Repeat(lambda i: nn.Linear(4, 4), choice('a', [1, 2]) + choice('b', [0, 1]))

        def forward(self, x):
            return self.blocks(x)

    with pytest.raises(ValueError, match=r"Repeat 'blocks'.*one .*choice.*\['a', 'b'\]"):
        supernet(TwoLabels())


def test_costs_count_what_each_depth_adds():
    model = build()
    resample(model)
    table = proxyless_rs.count_costs(model, torch.randn(2, 4), costs=('params',))

    def params(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    first, second = model.first, model.second
    stacked = {  # the parameters each repeat holds at each value of the label
        'first': [params(*first.blocks[:d], *([first.first_cell_transformation] if d == 1 else []))
                  for d in first.depths],
        'second': [params(*second.blocks[:d]) for d in second.depths]}
    # each repeat's row: what a value adds over the shallowest; the table's: their mean (both count it)
    expected = [((a - stacked['first'][0]) + (b - stacked['second'][0])) / 2
                for a, b in zip(stacked['first'], stacked['second'])]
    assert table['params']['depth'] == {str(v): e for v, e in zip([2, 4, 6], expected)}
    # so that the prediction adds up to what the deeper network holds over the shallowest
    shallow = proxyless_rs.predicted_costs({'depth': 2}, model, table)['params']
    deep = proxyless_rs.predicted_costs({'depth': 6}, model, table)['params']
    assert deep - shallow == stacked['first'][2] - stacked['first'][0] + stacked['second'][2] - stacked['second'][0]
