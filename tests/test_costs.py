"""Several costs: the exact export under hard limits (against brute force), the loss forms (against
finite differences), the limit penalty and multiplier, and costs counted from real modules
(against hand counts)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn

from conftest import requires_flop_counter
from proxyless_rs import (
    CandidateTable,
    CostSpec,
    CostTable,
    LagrangeMultiplier,
    LatencyTable,
    ProxylessMixedInput,
    ProxylessMixedLayer,
    constrained_export,
    cost_loss,
    count_costs,
    expected_costs,
    expected_latency,
    latency_loss,
    limit_penalty,
    predicted_costs,
    predicted_latency,
    top_architectures,
)
from proxyless_rs.hardware.export import _options
from proxyless_rs.nni.version import NNI3


class Space(nn.Module):
    """Mixed layers of 2 to 4 candidates, two layers sharing label 's' (one alpha), an input
    choice of one input and one of two inputs out of four."""

    def __init__(self, generator: torch.Generator, scale: float = 2.0):
        super().__init__()

        def alpha(n):
            return nn.Parameter(torch.randn(n, generator=generator, dtype=torch.float64) * scale)

        def layer(n, label, a=None):
            return ProxylessMixedLayer([(f'op{i}', nn.Identity()) for i in range(n)], alpha(n) if a is None else a,
                                       nn.Softmax(-1), label)

        shared = alpha(3)
        self.layers = nn.ModuleList([layer(3, 'a'), layer(2, 'b'), layer(3, 's', shared), layer(4, 'c'),
                                     layer(3, 's', shared)])
        self.one = ProxylessMixedInput(3, 1, alpha(3), nn.Softmax(-1), 'in1')
        self.two = ProxylessMixedInput(4, 2, alpha(4), nn.Softmax(-1), 'in2')

    def mixed(self):
        return [*self.layers, self.one, self.two]


def random_table(space: Space, costs: list[str], generator: torch.Generator) -> CostTable:
    tables: dict = {cost: {} for cost in costs}
    for layer in space.mixed():
        keys = layer.op_names if isinstance(layer, ProxylessMixedLayer) else [str(i) for i in range(layer.n_candidates)]
        for cost in costs:
            tables[cost].setdefault(layer.label, {k: float(torch.rand((), generator=generator)) * 10 for k in keys})
    return CostTable(tables)


def every_architecture(space: Space, table: CostTable) -> list[tuple[dict, float, dict[str, float]]]:
    """Every architecture with its probability (from softmax(alpha)) and its predicted costs."""
    firsts = {}
    for layer in space.mixed():
        firsts.setdefault(layer.label, layer)
    labels = list(firsts)
    result = []
    for combo in itertools.product(*(_options(firsts[label]) for label in labels)):
        arch = {label: value for label, (value, _) in zip(labels, combo)}
        p = 1.0
        for label, (value, _) in zip(labels, combo):
            layer = firsts[label]
            probs = torch.softmax(layer._arch_alpha.detach(), -1)
            chosen = [layer.op_names.index(value)] if isinstance(layer, ProxylessMixedLayer) else \
                (value if isinstance(value, list) else [value])
            p *= math.prod(probs[i].item() for i in chosen)
        result.append((arch, p, predicted_costs(arch, space, table)))
    return result


@pytest.mark.parametrize('costs', [['latency'], ['latency', 'params'], ['latency', 'params', 'flops']])
@pytest.mark.parametrize('seed', range(6))
def test_constrained_export_equals_brute_force(seed, costs):
    generator = torch.Generator().manual_seed(seed)
    space = Space(generator)
    table = random_table(space, costs, generator)
    everything = every_architecture(space, table)
    assert len(everything) == 3 * 2 * 3 * 4 * 3 * 6  # 's' counted once
    unconstrained = predicted_costs(space_export(space), space, table)
    least = {c: min(totals[c] for _, _, totals in everything) for c in costs}
    checked = binding = 0
    for fraction in (-0.01, 0.05, 0.2, 0.4, 0.6, 0.8, 1.0):
        limits = {c: least[c] + fraction * (unconstrained[c] - least[c]) for c in costs}
        feasible = [(p, arch) for arch, p, totals in everything if all(totals[c] <= limits[c] for c in costs)]
        if not feasible:
            with pytest.raises(ValueError, match='constrained_export: no architecture meets'):
                constrained_export(space, table, limits)
            continue
        p, expected = max(feasible, key=lambda item: item[0])
        got, info = constrained_export(space, table, limits, return_info=True)
        assert got == expected, (fraction, limits)
        assert info['probability'] == pytest.approx(p, rel=1e-9)
        assert info['costs'] == pytest.approx(predicted_costs(got, space, table))
        checked += 1
        binding += got != space_export(space)
    assert checked >= 2 and binding >= 1


def space_export(space: Space) -> dict:
    memo: dict = {}
    for layer in space.mixed():
        memo.update(layer.export(memo))
    return memo


def test_a_limit_that_binds_nothing_gives_the_plain_export_and_shared_labels_count_per_layer():
    space = Space(torch.Generator().manual_seed(11))
    table = random_table(space, ['latency'], torch.Generator().manual_seed(12))
    assert constrained_export(space, table, math.inf) == space_export(space)
    latency = LatencyTable(table['latency'])
    arch = constrained_export(space, latency, 1e9)
    assert arch == space_export(space)
    # 's' is chosen once; its latency counts for both of its layers.
    total = predicted_latency(arch, space, latency)
    assert total == pytest.approx(sum(latency[layer.label][str(c)] for layer in space.mixed()
                                      for c in (arch[layer.label] if isinstance(arch[layer.label], list)
                                                else [arch[layer.label]])))


def test_impossible_limits_are_refused_with_the_smallest_achievable_values():
    space = Space(torch.Generator().manual_seed(3))
    table = CostTable({
        'latency': {'a': {'op0': 1, 'op1': 2, 'op2': 3}, 'b': {'op0': 1, 'op1': 1}, 's': {'op0': 2, 'op1': 1, 'op2': 5},
                    'c': {'op0': 4, 'op1': 3, 'op2': 3, 'op3': 9}, 'in1': {'0': 0, '1': 1, '2': 1},
                    'in2': {'0': 1, '1': 2, '2': 3, '3': 4}},
        'params': {'a': {'op0': 9, 'op1': 0, 'op2': 0}, 'b': {'op0': 0, 'op1': 0}, 's': {'op0': 0, 'op1': 5, 'op2': 0},
                   'c': {'op0': 0, 'op1': 0, 'op2': 0, 'op3': 0}, 'in1': {'0': 0, '1': 0, '2': 0},
                   'in2': {'0': 0, '1': 0, '2': 0, '3': 0}},
    })
    # Least latency: a 1 + b 1 + s 1 (twice) + c 3 + in1 0 + in2 1 + 2 = 10.
    with pytest.raises(ValueError, match=r'no architecture meets latency <= 9\.5; the smallest achievable value is '
                                         r'latency 10 \(each cost on its own\); latency cannot be met'):
        constrained_export(space, table, {'latency': 9.5})
    assert predicted_costs(constrained_export(space, table, {'latency': 10}), space, table)['latency'] == 10
    # Latency 10 needs a = op0 (params 9) and s = op1 (params 5 twice): each limit alone can be met, not both.
    with pytest.raises(ValueError, match=r'no architecture meets latency <= 10, params <= 5 at once, although each '
                                         r'limit can be met on its own \(smallest achievable latency 10, params 0\)'):
        constrained_export(space, table, {'latency': 10, 'params': 5})
    with pytest.raises(ValueError, match=r"several costs \['latency', 'params'\]: give the limit as"):
        constrained_export(space, table, 10.0)
    with pytest.raises(KeyError, match=r"no cost 'flops' \(it has \['latency', 'params'\]\)"):
        constrained_export(space, table, {'flops': 1.0})


def test_cost_tables_check_save_load_and_single_cost_tables(tmp_path):
    space = Space(torch.Generator().manual_seed(0))
    table = random_table(space, ['latency', 'memory'], torch.Generator().manual_seed(1))
    assert isinstance(table['latency'], LatencyTable) and table['memory'].cost == 'memory'
    path = tmp_path / 'costs.json'
    table.save(path)
    loaded = CostTable.load(path)
    assert {c: dict(t) for c, t in loaded.items()} == {c: dict(t) for c, t in table.items()}
    assert list(CostTable.of({'a': {'op0': 1.0}})) == ['latency']
    assert list(CostTable.of(CandidateTable({'a': {'op0': 1.0}}, cost='flops'))) == ['flops']
    broken = CostTable({'latency': table['latency'], 'memory': {k: v for k, v in table['memory'].items() if k != 'c'}})
    with pytest.raises(KeyError, match=r"ProxylessMixedLayer 'c': the memory table has no entry for its label"):
        broken.check(space)
    with pytest.raises(ValueError, match=r"memory table: layer 'a', candidate 'op0' has memory -1.0; memory values "
                                         r'must be finite and non-negative'):
        CostTable({'memory': {'a': {'op0': -1.0}}})
    expected = expected_costs(space, table)
    torch.testing.assert_close(expected['latency'], expected_latency(space, table['latency']))


# --- loss forms ---------------------------------------------------------------------------------

def test_loss_forms_are_the_named_formulas():
    task, lat = torch.tensor(2.0, dtype=torch.float64), torch.tensor(80.0, dtype=torch.float64)
    # mit-han-lab/proxylessnas search/nas_manager.py, add_regularization_loss:
    #   'mul#log':   alpha * ce * (log(E) / log(ref)) ** beta    (alpha 1, beta 0.6 by default)
    #   'add#linear': ce + lambda * (E - ref) / ref               (lambda 0.2 by default)
    assert latency_loss(task, lat, 'mul#log', target=60.0).item() == pytest.approx(
        2.0 * (math.log(80.0) / math.log(60.0)) ** 0.6)
    assert latency_loss(task, lat, 'mul#log', 0.9, target=60.0, scale=3.0).item() == pytest.approx(
        3.0 * 2.0 * (math.log(80.0) / math.log(60.0)) ** 0.9)
    assert latency_loss(task, lat, 'add#linear', target=60.0).item() == pytest.approx(2.0 + 0.2 * 20.0 / 60.0)
    # MnasNet's (NNI 3.0's) multiplicative form, and the log form: unchanged.
    assert latency_loss(task, lat, 'mul', 0.07, target=60.0).item() == pytest.approx(2.0 * (80 / 60) ** 0.07)
    assert latency_loss(task, lat, 'log').item() == pytest.approx(2.0 + 0.1 * math.log(80.0))
    with pytest.raises(ValueError, match='"mul#log" latency loss needs a positive target'):
        latency_loss(task, lat, 'mul#log')
    with pytest.raises(ValueError, match='target must not be 1'):
        latency_loss(task, lat, 'mul#log', target=1.0)


@pytest.mark.parametrize('form', ['log', 'mul', 'mul#log', 'add#linear'])
def test_each_loss_form_gradient_equals_finite_differences(form):
    """Through the task loss, the expected latency and alpha itself (torch.autograd.gradcheck)."""
    space = Space(torch.Generator().manual_seed(5), scale=0.5)
    table = random_table(space, ['latency'], torch.Generator().manual_seed(6))['latency']
    alphas = [layer._arch_alpha for layer in space.mixed()]
    alphas = list({id(a): a for a in alphas}.values())

    def loss(task, *new_alphas):
        # The expected latency written out from the inputs: sum over layers of softmax(alpha) . latency.
        expected = sum((torch.softmax(new_alphas[[id(a) for a in alphas].index(id(layer._arch_alpha))], -1)
                        * table.latencies(layer)).sum() for layer in space.mixed())
        return latency_loss(task, expected, form, 0.7, target=20.0, scale=1.5)

    inputs = (torch.tensor(1.3, dtype=torch.float64, requires_grad=True),
              *[a.detach().clone().requires_grad_() for a in alphas])
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    # And expected_latency's own graph: its alpha gradient equals finite differences of its value.
    task = torch.tensor(1.3, dtype=torch.float64)
    for a in alphas:
        a.grad = None
    latency_loss(task, expected_latency(space, table), form, 0.7, target=20.0, scale=1.5).backward()
    a = alphas[0]
    for i in range(len(a)):
        values = []
        for step in (1e-6, -1e-6):
            with torch.no_grad():
                a[i] += step
            values.append(latency_loss(task, expected_latency(space, table), form, 0.7, 20.0, 1.5).item())
            with torch.no_grad():
                a[i] -= step
        assert a.grad[i].item() == pytest.approx((values[0] - values[1]) / 2e-6, rel=1e-5, abs=1e-8)


def test_limit_penalty_is_zero_below_the_limit_and_differentiable_above():
    below = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    penalty = limit_penalty(below, 10.0, weight=3.0)
    penalty.backward()
    assert penalty.item() == 0 and below.grad.item() == 0
    above = torch.tensor(12.0, dtype=torch.float64, requires_grad=True)
    assert limit_penalty(above, 10.0, 3.0).item() == pytest.approx(3.0 * 0.2 ** 2)
    assert limit_penalty(above, 10.0, 3.0, power=1).item() == pytest.approx(3.0 * 0.2)
    for power in (1.0, 2.0):
        assert torch.autograd.gradcheck(lambda e, p=power: limit_penalty(e, 10.0, 3.0, p), (above,), eps=1e-6)
    with pytest.raises(ValueError, match='positive, finite limit'):
        limit_penalty(above, 0.0)


def test_lagrange_multiplier_rises_above_the_limit_and_falls_to_zero_below():
    m = LagrangeMultiplier(10.0, lr=1.0)
    assert m.step(15.0) == pytest.approx(0.5) and m.step(15.0) == pytest.approx(1.0)
    e = torch.tensor(15.0, requires_grad=True)
    m.term(e).backward()
    assert e.grad.item() == pytest.approx(1.0 / 10.0)
    assert m.step(5.0) == pytest.approx(0.5) and m.step(5.0) == 0.0 and m.step(5.0) == 0.0
    state = m.state_dict()
    other = LagrangeMultiplier(1.0)
    other.load_state_dict(state)
    assert other.state_dict() == state


def test_cost_loss_combines_forms_and_limits_and_one_cost_is_latency_loss():
    space = Space(torch.Generator().manual_seed(8), scale=0.5)
    table = random_table(space, ['latency', 'params', 'flops'], torch.Generator().manual_seed(9))
    task = torch.tensor(1.7, dtype=torch.float64)
    e = {c: expected_latency(space, table[c]) for c in table}
    loss, details = cost_loss(task, space, table, {'latency': CostSpec(form='mul#log', target=20.0)})
    torch.testing.assert_close(loss, latency_loss(task, e['latency'], 'mul#log', target=20.0))
    assert set(details) == {'latency'} and not details['latency'].requires_grad
    limit = 0.9 * e['params'].item()
    loss, details = cost_loss(task, space, table, {
        'latency': {'form': 'mul', 'weight': 0.5, 'target': 15.0},
        'params': CostSpec(limit=limit, penalty=4.0),
        'flops': CostSpec(form='add#linear', weight=0.3, target=12.0, limit=1e6),
    })
    manual = task * (e['latency'] / 15.0) ** 0.5 + 0.3 * (e['flops'] - 12.0) / 12.0 \
        + 4.0 * (torch.relu(e['params'] - limit) / limit) ** 2
    torch.testing.assert_close(loss, manual)
    assert set(details) == {'latency', 'params', 'flops'}
    loss.backward()
    assert all(layer._arch_alpha.grad is not None for layer in space.mixed())
    with pytest.raises(ValueError, match="cost loss form 'max' does not exist"):
        CostSpec(form='max')
    with pytest.raises(KeyError, match="no cost 'energy'"):
        cost_loss(task, space, table, {'energy': CostSpec(limit=1.0)})


# --- costs counted from the real modules ---------------------------------------------------------

class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = ProxylessMixedLayer([
            ('conv', nn.Conv2d(4, 8, 3, padding=1)),
            ('depthwise', nn.Conv2d(4, 8, 3, padding=1, groups=4, bias=False)),
            ('up', nn.ConvTranspose2d(4, 8, 2, stride=2)),
            ('pool', nn.MaxPool2d(1)),
        ], nn.Parameter(torch.zeros(4)), nn.Softmax(-1), 'conv')
        self.mlp = ProxylessMixedLayer([
            ('linear', nn.Linear(16, 32)),
            ('mlp', nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))),
        ], nn.Parameter(torch.zeros(2)), nn.Softmax(-1), 'mlp')
        self.pick = ProxylessMixedInput(2, 1, nn.Parameter(torch.zeros(2)), nn.Softmax(-1), 'pick')

    def forward(self, x):
        self.conv(x)
        h = x.flatten(2).mean(1)  # (B, 16)
        return self.pick([h, self.mlp(h).mean(-1, keepdim=True).expand_as(h)])


@requires_flop_counter
def test_counted_costs_match_hand_counts():
    net = Convs()
    for m in (net.conv, net.mlp, net.pick):
        m.resample({'conv': 'pool', 'mlp': 'linear', 'pick': 1})
    b = 2
    table = count_costs(net, torch.randn(b, 4, 4, 4))
    params, flops, memory = table['params'], table['flops'], table['memory']
    # Parameters: weights and biases.
    assert dict(params['conv']) == {'conv': 8 * 4 * 9 + 8, 'depthwise': 8 * 1 * 9, 'up': 4 * 8 * 4 + 8, 'pool': 0}
    assert dict(params['mlp']) == {'linear': 16 * 32 + 32, 'mlp': 16 * 64 + 64 + 64 * 16 + 16}
    assert dict(params['pick']) == {'0': 0, '1': 0}
    # FLOPs: 2 per multiply-accumulate. Conv: every output pixel of every output channel takes
    # (in/groups)*k*k MACs. Transposed conv: every input pixel of every input channel scatters
    # into (out/groups)*k*k outputs. Linear: in*out MACs per row.
    assert flops['conv']['conv'] == 2 * b * 8 * 4 * 4 * (4 * 9)
    assert flops['conv']['depthwise'] == 2 * b * 8 * 4 * 4 * (1 * 9)
    assert flops['conv']['up'] == 2 * b * 4 * 4 * 4 * (8 * 4)
    assert flops['conv']['pool'] == 0
    assert flops['mlp']['linear'] == 2 * b * 16 * 32
    assert flops['mlp']['mlp'] == 2 * b * (16 * 64 + 64 * 16)
    # Peak memory (float32): a conv's output; the MLP's peak is the ReLU's input and output alive
    # together (b*64 floats each), before the first is freed.
    assert memory['conv']['conv'] == b * 8 * 4 * 4 * 4
    assert memory['conv']['up'] == b * 8 * 8 * 8 * 4
    assert memory['mlp']['linear'] == b * 32 * 4
    assert memory['mlp']['mlp'] == 2 * b * 64 * 4
    assert dict(memory['pick']) == {'0': 0, '1': 0}
    assert net.conv._sampled == 'pool'  # the sampled paths are restored
    with pytest.raises(ValueError, match=r"\['energy'\] cannot be counted"):
        count_costs(net, torch.randn(b, 4, 4, 4), costs=['energy'])


@requires_flop_counter
def test_counted_costs_feed_a_constrained_export():
    net = Convs()
    table = count_costs(net, torch.randn(1, 4, 4, 4), costs=['params', 'flops'])
    with torch.no_grad():
        net.conv._arch_alpha.copy_(torch.tensor([3.0, 2.0, 1.0, 0.0]))
        net.mlp._arch_alpha.copy_(torch.tensor([0.0, 1.0]))
    # conv (296 parameters, 9216 FLOPs) is the most probable but breaks the FLOPs limit; depthwise
    # (72, 2304) with linear (544, 1024) fits; mlp (2144, 4096) never does.
    arch = constrained_export(net, table, {'params': 700, 'flops': 3500})
    assert arch == {'conv': 'depthwise', 'mlp': 'linear', 'pick': [0] if NNI3 else 0}  # as each NNI exports
    assert predicted_costs(arch, net, table) == {'params': 72 + 544, 'flops': 2304 + 1024}


# --- the k best architectures --------------------------------------------------------------------

@pytest.mark.parametrize('costs', [None, ['latency'], ['latency', 'params']])
@pytest.mark.parametrize('seed', range(4))
def test_the_k_best_architectures_equal_brute_force(seed, costs):
    generator = torch.Generator().manual_seed(100 + seed)
    space = Space(generator, scale=1.0)
    table = random_table(space, costs or ['latency'], generator)
    everything = every_architecture(space, table)
    if costs is None:
        limits, within = None, everything
    else:
        unconstrained = predicted_costs(space_export(space), space, table)
        least = {c: min(totals[c] for _, _, totals in everything) for c in costs}
        limits = {c: least[c] + 0.5 * (unconstrained[c] - least[c]) for c in costs}
        within = [item for item in everything if all(item[2][c] <= limits[c] for c in costs)]
    ranked_by_hand = sorted(within, key=lambda item: -item[1])
    for k in (1, 2, 7, 40, len(within) + 5):
        got = top_architectures(space, k, table=None if costs is None else table, limit=limits)
        expected = ranked_by_hand[:k]
        assert [r.architecture for r in got] == [arch for arch, _, _ in expected], k
        assert [r.probability for r in got] == pytest.approx([p for _, p, _ in expected], rel=1e-9)
        if costs is None:
            assert all(r.costs == {} for r in got)
        else:
            assert [r.costs for r in got] == [pytest.approx(totals) for _, _, totals in expected]
    # The first is the export (unconstrained) or constrained_export's; with k, constrained_export
    # gives the same list.
    if costs is None:
        assert top_architectures(space, 1)[0].architecture == space_export(space)
    else:
        assert top_architectures(space, 1, table=table, limit=limits)[0].architecture == \
            constrained_export(space, table, limits)
        assert constrained_export(space, table, limits, k=5) == \
            [r.architecture for r in top_architectures(space, 5, table=table, limit=limits)]
        pairs = constrained_export(space, table, limits, k=2, return_info=True)
        assert [info['probability'] for _, info in pairs] == pytest.approx([p for _, p, _ in ranked_by_hand[:2]])


def test_the_k_best_refuse_a_bad_k_and_a_limit_without_a_table():
    space = Space(torch.Generator().manual_seed(0))
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match='k must be a positive integer'):
            top_architectures(space, k)
    with pytest.raises(ValueError, match='a limit needs the table'):
        top_architectures(space, 2, limit=1.0)


@pytest.mark.skipif(NNI3, reason="NNI 2.10's ProxylessMixedRepeat constructor; tests/test_nni3.py builds NNI 3.0's")
def test_a_depth_choice_is_one_choice_among_its_depths():
    # A depth choice of 1 to 4 blocks (a chain of three skip-or-block choices) beside a layer: its
    # options are its depths, of probability P(depth) (the chain's Poisson-binomial), each built
    # from the first blocks; the costs those of the blocks taken and the skips.
    from proxyless_rs import ProxylessMixedRepeat, depth_distribution, freeze

    torch.manual_seed(0)
    blocks = [nn.Linear(4, 4) for _ in range(4)]
    chain = [blocks[0]] + [ProxylessMixedLayer([('0', nn.Identity()), ('1', block)],
                                               nn.Parameter(torch.randn(2, dtype=torch.float64)), nn.Softmax(-1),
                                               f'depth/in_repeat_{i}') for i, block in enumerate(blocks[1:], start=1)]
    model = nn.Sequential(
        ProxylessMixedLayer([('a', nn.Identity()), ('b', nn.Tanh()), ('c', nn.ReLU())],
                            nn.Parameter(torch.randn(3, dtype=torch.float64)), nn.Softmax(-1), 'act'),
        ProxylessMixedRepeat(chain, 'depth', [1, 2, 4], 1, 4))
    latency = {'act': {'a': 0.0, 'b': 1.0, 'c': 2.0}}
    for i in range(1, 4):
        latency[f'depth/in_repeat_{i}'] = {'0': 0.1, '1': 1.0 + i}
    table = LatencyTable(latency)
    p_act = torch.softmax(model[0]._arch_alpha.detach(), -1).tolist()
    p_depth = depth_distribution([torch.softmax(layer._arch_alpha.detach(), -1)[1] for layer in chain[1:]]).tolist()
    everything = []
    for (act, pa), depth in itertools.product(zip('abc', p_act), [1, 2, 4]):
        arch = {'act': act, 'depth': depth, **{f'depth/in_repeat_{i}': '1' if i < depth else '0' for i in range(1, 4)}}
        everything.append((arch, pa * p_depth[depth - 1], predicted_latency(arch, model, table)))
    everything.sort(key=lambda item: -item[1])
    got = top_architectures(model, 9, table=table)
    assert [r.architecture for r in got] == [arch for arch, _, _ in everything]
    assert [r.probability for r in got] == pytest.approx([p for _, p, _ in everything], rel=1e-9)
    assert [r.costs['latency'] for r in got] == pytest.approx([ms for _, _, ms in everything])
    # The first is the export (the most probable depth); under a limit, the best that fits.
    memo: dict = {}
    for module in (model[0], model[1]):
        memo.update(module.export(memo))
    assert got[0].architecture == memo
    limit = sorted(ms for _, _, ms in everything)[3]
    fitting = [arch for arch, _, ms in everything if ms <= limit]
    assert constrained_export(model, table, limit, k=3) == fitting[:3]
    # Each is a child network of that depth.
    for ranked in got[:3]:
        child = freeze(model, ranked.architecture)
        assert len(child[1]) == ranked.architecture['depth']


def test_tied_probabilities_rank_by_index_whatever_k_and_the_table():
    # All alphas zero (README's example starts there): every architecture ties. The documented order
    # (the choices' indices, in the layers' order) holds for every k, with a table or without, and the
    # constrained export is the first of the k best.
    layer = ProxylessMixedLayer([(name, nn.Linear(2, 2)) for name in 'abc'], nn.Parameter(torch.zeros(3)),
                                nn.Softmax(-1), 'op')
    model = nn.Sequential(layer)
    table = CostTable({'latency': {'op': {'a': 13.0, 'b': 8.0, 'c': 4.0}}})
    for k in range(1, 5):
        expected = [{'op': name} for name in 'abc'[:k]]
        for kwargs in ({}, {'table': table}, {'table': table, 'limit': 100.0}):
            assert [r.architecture for r in top_architectures(model, k, **kwargs)] == expected, (k, kwargs)
    assert constrained_export(model, table, 100.0) == {'op': 'a'}
    assert constrained_export(model, table, 10.0) == {'op': 'b'}  # the first within the limit
