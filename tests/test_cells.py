"""NNI's cells under ProxylessNAS, under both NNI versions: each slot draws its input and its op.

NNI has no ProxylessNAS cell to compare with (its ProxylessNAS refuses cells whose ops depend on
their input, and the merge ``loose_end``), so the alpha gradients are compared with a float64
reference of the binary-gate formula written out in the test: the cell's forward run again by
hand with every slot's output kept, and for each slot ``b`` of its op choice (each op of the drawn
edge on the drawn input) and of its input choice (the drawn op as built for each earlier state, on
that state), dotted with the gradient at the slot's output; ``dL/dalpha = p * (b - <b, p>)``. The
cell is a reduction cell: its ops on the cell's inputs have stride 2, the others stride 1.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import proxyless_rs
from conftest import NNI3
from value_spaces import Base, Cell, resample, space, supernet

warnings.filterwarnings('ignore', category=UserWarning)

# Run at both ends of the torch span too (make test-regression, make span).
pytestmark = pytest.mark.regression

PREDECESSORS, NODES, SLOTS = 2, 2, 2


def factory(kind: str):
    def make(node: int, op: int, input_index: int | None) -> nn.Module:
        stride = 2 if input_index is not None and input_index < PREDECESSORS else 1  # a reduction cell
        if kind == 'conv':
            return nn.Conv2d(3, 3, 3, stride=stride, padding=1)
        if kind == 'dilated':
            return nn.Sequential(nn.ReLU(), nn.Conv2d(3, 3, 3, stride=stride, padding=2, dilation=2))
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    return make


@space
class ReductionCellSpace(Base):
    def __init__(self):
        super().__init__()
        self.cell = Cell({kind: factory(kind) for kind in ('conv', 'dilated', 'pool')}, NODES, SLOTS, PREDECESSORS,
                         label='cell')
        self.head = nn.Linear(3 * NODES, 4)

    def forward(self, x):
        y = self.cell([x, torch.tanh(x)])
        return self.head(y.mean((2, 3)))


def build(mode: str = 'full') -> nn.Module:
    torch.manual_seed(0)
    return supernet(ReductionCellSpace(), mode=mode)


def exported_input(index: int):
    return [index] if NNI3 else index


def test_the_cell_is_one_unit_with_nnis_labels():
    model = build()
    cell = model.cell
    assert isinstance(cell, proxyless_rs._cell.ProxylessCell)
    labels = [site.label for site in cell.choice_sites()]
    assert labels == [f'cell/{kind}_{node}_{slot}' for node in range(2, 4) for slot in range(2)
                      for kind in ('op', 'input')]
    memo = resample(model)
    assert set(memo) == set(labels)
    assert all(memo[f'cell/op_{n}_{s}'] in ('conv', 'dilated', 'pool') for n in (2, 3) for s in (0, 1))


def reference_alpha_grads(model: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                          memo: dict) -> dict[str, torch.Tensor]:
    """The binary-gate alpha gradients of every slot's op and input choices, in float64, by hand."""
    model = copy.deepcopy(model).double()
    resample(model, memo)
    cell = model.cell
    x = x.double().requires_grad_()  # every slot output then has a gradient (a pool on the input has no weight)
    with proxyless_rs.no_arch_grad(model):
        states = cell.preprocessor([x, torch.tanh(x)])
        outputs = []
        for node, edges in enumerate(cell.ops, start=PREDECESSORS):
            slot_outputs = []
            for slot in range(SLOTS):
                op = memo[f'cell/op_{node}_{slot}']
                j = memo[f'cell/input_{node}_{slot}']
                j = j[0] if isinstance(j, list) else j
                out = edges[j][op](states[j])
                out.retain_grad()
                outputs.append((node, slot, op, j, [s.detach() for s in states], out))
                slot_outputs.append(out)
            states.append(sum(slot_outputs))
        y = cell.postprocessor(torch.cat(states[PREDECESSORS:], 1), [x, torch.tanh(x)])
        (model.head(y.mean((2, 3))) * weight.double()).sum().backward()
    grads = {}
    with torch.no_grad():
        for node, slot, op, j, saved, out in outputs:
            edges = cell.ops[node - PREDECESSORS]
            names = list(cell.op_names)
            b_op = torch.stack([(edges[j][name](saved[j]) * out.grad).sum() for name in names])
            b_input = torch.stack([(edges[i][op](saved[i]) * out.grad).sum() for i in range(node)])
            for label, b in ((f'cell/op_{node}_{slot}', b_op), (f'cell/input_{node}_{slot}', b_input)):
                p = torch.softmax(cell._arch_alpha[label].detach().double(), -1)
                grads[label] = p * (b - (b * p).sum())
    return grads


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_op_and_input_gradients_are_the_float64_reference_over_every_slot(dtype):
    model = build().to(dtype)
    reference_model = copy.deepcopy(model)
    torch.manual_seed(1)
    x = torch.randn(3, 3, 8, 8, dtype=dtype)
    # Every input and op drawn at least once across the slots: a later node's input on a node.
    memo = {'cell/op_2_0': 'conv', 'cell/input_2_0': exported_input(0), 'cell/op_2_1': 'pool',
            'cell/input_2_1': exported_input(1), 'cell/op_3_0': 'dilated', 'cell/input_3_0': exported_input(2),
            'cell/op_3_1': 'conv', 'cell/input_3_1': exported_input(1)}
    assert resample(model, memo) == memo
    out = model(x)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    expected = reference_alpha_grads(reference_model, x, weight, memo)
    tolerance = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    for site in model.cell.choice_sites():
        ours = model.cell._arch_alpha[site.label].grad
        assert ours is not None, site.label
        torch.testing.assert_close(ours.double(), expected[site.label], **tolerance, msg=site.label)
    assert max(float(g.abs().max()) for g in expected.values()) > 1e-6


def test_the_cell_exports_and_freezes_into_its_child():
    model = build()
    memo = resample(model)
    from proxyless_rs.child import _export

    architecture = _export(model)
    assert set(architecture) == set(memo)
    child = proxyless_rs.freeze(model, architecture)
    assert isinstance(child.cell, proxyless_rs.child.ChosenCell)
    assert not any(isinstance(m, proxyless_rs._cell.ProxylessCell) for m in child.modules())
    resample(model, architecture)
    model.eval()
    child.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(child(x), model(x))
    # NNI's own frozen cell of the same architecture holds the child's weights under the same keys.
    if NNI3:
        frozen = ReductionCellSpace().freeze(architecture)
    else:
        from nni.retiarii import fixed_arch

        with fixed_arch(architecture):
            frozen = ReductionCellSpace()
    frozen.load_state_dict(child.state_dict())
    with torch.no_grad():
        assert torch.equal(frozen.eval()(x), child(x))


def test_two_path_mode_moves_two_logits_of_each_choice():
    model = build(mode='two')
    torch.manual_seed(2)
    resample(model)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    for site in model.cell.choice_sites():
        pending = site.ctx.arch.pending
        grad = model.cell._arch_alpha[site.label].grad
        assert pending is not None and grad is not None
        others = [i for i in range(len(site.names)) if i not in pending]
        assert grad[others].abs().max() == 0 if others else True


def test_costs_count_each_slots_op_and_the_exports_respect_them():
    model = build()
    resample(model)
    x = torch.randn(2, 3, 8, 8)
    table = proxyless_rs.count_costs(model, x, costs=('params', 'memory'))
    cell = model.cell
    for node in range(2, 4):
        for slot in range(2):
            row = table['params'][f'cell/op_{node}_{slot}']
            # the op as built for the cell's first input (a reduction cell's stride-2 edge)
            edge = cell.ops[node - PREDECESSORS][0]
            assert row == {name: float(sum(p.numel() for p in edge[name].parameters())) for name in cell.op_names}
            assert table['params'][f'cell/input_{node}_{slot}'] == {str(j): 0.0 for j in range(node)}
    assert table['params']['cell/op_2_0']['conv'] > 0 and table['params']['cell/op_2_0']['pool'] == 0
    assert table['memory']['cell/op_2_0']['dilated'] > table['memory']['cell/op_2_0']['conv']  # the ReLU's output
    # Predicted costs: the sum of each slot's op row; the constrained export keeps within them.
    architecture = proxyless_rs.child._export(model)
    predicted = proxyless_rs.predicted_costs(architecture, model, table)
    assert predicted['params'] == sum(table['params'][site.label][str(architecture[site.label])]
                                      for site in cell.choice_sites() if site.kind == 'op')
    limited = proxyless_rs.constrained_export(model, table, {'params': 84.0})
    assert proxyless_rs.predicted_costs(limited, model, table)['params'] <= 84.0
    assert sum(limited[f'cell/op_{n}_{s}'] != 'pool' for n in (2, 3) for s in (0, 1)) == 1
    # The k best: the most probable first, each a full architecture NNI's cell takes.
    best = proxyless_rs.top_architectures(model, k=3)
    assert best[0].architecture == architecture and best[0].probability >= best[1].probability >= best[2].probability
    latency = proxyless_rs.profile_latency(model, x, repeats=1, warmup=0, progress=False)
    assert set(latency) == {site.label for site in cell.choice_sites()}
