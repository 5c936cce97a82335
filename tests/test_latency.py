"""The latency table, profiler, expected-latency term and loss forms, and a latency-aware search."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import proxyless_rs
from conftest import requires_nni2
from proxyless_rs import (
    LatencyTable,
    ProxylessMixedInput,
    ProxylessMixedLayer,
    expected_latency,
    latency_loss,
    predicted_latency,
    profile_latency,
)
from proxyless_rs.nni.version import NNI3


class Net(nn.Module):
    def __init__(self, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(0)
        self.a = ProxylessMixedLayer([('small', nn.Linear(8, 8)), ('wide', nn.Sequential(nn.Linear(8, 512), nn.ReLU(),
                                                                                         nn.Linear(512, 8))),
                                      ('skip', nn.Identity())], nn.Parameter(torch.randn(3)), nn.Softmax(-1), 'a')
        self.b = ProxylessMixedInput(2, 1, nn.Parameter(torch.randn(2)), nn.Softmax(-1), 'b')
        self.to(dtype)

    def forward(self, x):
        return self.b([x, self.a(x)])


TABLE = {'a': {'small': 1.0, 'wide': 5.0, 'skip': 0.5}, 'b': {'0': 0.0, '1': 0.25}}


def test_table_checks_and_refuses_nonsense(tmp_path):
    net = Net()
    table = LatencyTable(TABLE)
    table.check(net)
    with pytest.raises(KeyError, match=r"ProxylessMixedInput 'b': the latency table has no entry for its label"):
        LatencyTable({'a': TABLE['a']}).check(net)
    with pytest.raises(KeyError, match=r"ProxylessMixedLayer 'a': the latency table lacks candidate\(s\) \['skip'\]"):
        LatencyTable({'a': {'small': 1.0, 'wide': 2.0}, 'b': TABLE['b']}).check(net)
    for bad in (-1.0, float('nan'), float('inf')):
        with pytest.raises(ValueError, match=r"layer 'a', candidate 'wide' has latency .*finite and non-negative"):
            LatencyTable({'a': {'small': 1.0, 'wide': bad, 'skip': 0.5}})
    path = tmp_path / 'table.json'
    table.save(path)
    assert dict(LatencyTable.load(path)) == dict(table)


def test_expected_latency_and_its_gradient_adds_to_the_hook_exactly():
    x = torch.randn(4, 8, dtype=torch.float64)
    table = LatencyTable(TABLE)
    grads = {}
    for terms in ('hook', 'latency', 'both'):
        net = Net()
        torch.manual_seed(3)
        for m in (net.a, net.b):
            m.resample({'b': 1})
        loss = torch.zeros((), dtype=torch.float64)
        if terms in ('hook', 'both'):
            loss = loss + net(x).square().mean()
        if terms in ('latency', 'both'):
            loss = loss + 0.3 * torch.log(expected_latency(net, table))
        loss.backward()
        grads[terms] = (net.a._arch_alpha.grad.clone(), net.b._arch_alpha.grad.clone())
    for i in range(2):
        torch.testing.assert_close(grads['both'][i], grads['hook'][i] + grads['latency'][i], rtol=1e-14, atol=1e-15)
    net = Net()
    p_a, p_b = torch.softmax(net.a._arch_alpha, -1), torch.softmax(net.b._arch_alpha, -1)
    expected = (p_a * torch.tensor([1.0, 5.0, 0.5], dtype=torch.float64)).sum() + p_b[1] * 0.25
    torch.testing.assert_close(expected_latency(net, table), expected)


def test_loss_forms():
    task, lat = torch.tensor(2.0), torch.tensor(8.0)
    assert latency_loss(task, lat, 'log', 0.5).item() == pytest.approx(2.0 + 0.5 * math.log(8.0))
    assert latency_loss(task, lat, 'mul', 0.6, target=4.0).item() == pytest.approx(2.0 * 2.0 ** 0.6)
    assert latency_loss(task, lat, 'log', 0.0) is task
    with pytest.raises(ValueError, match='form .add. does not exist'):
        latency_loss(task, lat, 'add', 0.5)
    with pytest.raises(ValueError, match='needs a positive target'):
        latency_loss(task, lat, 'mul', 0.5)
    with pytest.raises(ValueError, match='finite and non-negative'):
        latency_loss(task, lat, 'log', -1.0)


def test_predicted_latency_of_an_architecture():
    net = Net()
    table = LatencyTable(TABLE)
    assert predicted_latency({'a': 'wide', 'b': 1}, net, table) == pytest.approx(5.25)
    with pytest.raises(KeyError, match="ProxylessMixedInput 'b': predicted_latency was given an architecture with no "):
        predicted_latency({'a': 'wide'}, net, table)


def test_profiler_times_every_candidate_with_real_inputs():
    net = Net(torch.float32)
    net.a.resample({'a': 'skip'})
    table = profile_latency(net, torch.randn(64, 8), repeats=5, warmup=1, progress=False)
    table.check(net)
    assert set(table) == {'a', 'b'} and set(table['a']) == {'small', 'wide', 'skip'}
    assert all(v >= 0 for row in table.values() for v in row.values())
    assert table['a']['wide'] > table['a']['skip']
    assert net.a._sampled == 'skip' and len(net.a.ctx) == 0  # the sampled path is restored


def search_alphas(latency_weight, table=TABLE, seed=0):
    from test_strategy import run

    strategy = proxyless_rs.strategy.Proxyless(
        arc_learning_rate=0.1, latency_table=None if table is None else table, latency_weight=latency_weight)
    run(strategy, space_cls=LatencySpace, seed=seed, max_epochs=2)
    return strategy


def _latency_space():
    import nni.retiarii.nn.pytorch as nn_nni
    from nni.retiarii import model_wrapper

    @model_wrapper
    class LatencySpace(nn_nni.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn_nni.Linear(64, 32)
            self.a = nn_nni.LayerChoice([nn_nni.Linear(32, 32) for _ in range(3)], label='a')
            self.b = nn_nni.LayerChoice([nn_nni.Linear(32, 32), nn_nni.Linear(32, 32)], label='b')
            self.head = nn_nni.Linear(32, 10)

        def forward(self, x):
            return self.head(self.b(torch.relu(self.a(torch.relu(self.stem(x))))))

    return LatencySpace


LatencySpace = None if NNI3 else _latency_space()
SYNTHETIC = {'a': {'0': 9.0, '1': 1.0, '2': 9.0}, 'b': {'0': 9.0, '1': 1.0}}


@requires_nni2
def test_search_settles_on_low_latency_candidates_with_a_large_weight():
    strategy = search_alphas(latency_weight=5.0, table=SYNTHETIC)
    (architecture,) = strategy.export_top_models()
    assert architecture == {'a': '1', 'b': '1'}
    assert strategy.export_latency() == pytest.approx(2.0)
    probs = strategy.model.export_probs()
    assert probs['a/1'] > 0.5 and probs['b/1'] > 0.6


@requires_nni2
def test_search_does_not_care_with_zero_weight():
    with_table = search_alphas(latency_weight=0.0, table=SYNTHETIC)
    without = search_alphas(latency_weight=0.0, table=None)
    for a, b in zip(with_table.model.nas_modules, without.model.nas_modules):
        torch.testing.assert_close(a._arch_alpha, b._arch_alpha, rtol=0, atol=0)


@requires_nni2
def test_strategy_refuses_a_table_that_does_not_fit():
    from test_strategy import run

    with pytest.raises(KeyError, match=r"lacks candidate\(s\) \['2'\]"):
        run(proxyless_rs.strategy.Proxyless(latency_table={'a': {'0': 1, '1': 1}, 'b': {'0': 1, '1': 1}},
                                            latency_weight=1.0), space_cls=LatencySpace)
    with pytest.raises(ValueError, match='latency_weight is set but no latency_table'):
        run(proxyless_rs.strategy.Proxyless(latency_weight=1.0), space_cls=LatencySpace)


@requires_nni2
def test_search_under_a_latency_limit_exports_within_it():
    from test_strategy import run

    # The candidates' latencies are such that the unconstrained favourite ('0' of both, 18 ms) is over it.
    table = {'a': {'0': 9.0, '1': 1.0, '2': 6.0}, 'b': {'0': 9.0, '1': 4.0}}
    strategy = proxyless_rs.strategy.Proxyless(arc_learning_rate=0.05, latency_table=table, latency_limit=8.0)
    run(strategy, space_cls=LatencySpace, max_epochs=2)
    (architecture,) = strategy.export_top_models()
    assert strategy.export_latency() <= 8.0
    assert predicted_latency(architecture, strategy.model.model, LatencyTable(table)) <= 8.0
    # The k best within the limit: every architecture of the space that fits (3 x 2 = 6 in all, 4
    # within 8 ms), the first the export, in order of probability.
    top = strategy.export_top_models(top_k=10)
    fits = [{'a': a, 'b': b} for a in '012' for b in '01' if table['a'][a] + table['b'][b] <= 8.0]
    assert top[0] == architecture and sorted(map(str, top)) == sorted(map(str, fits))
    ranked = strategy.model.export_top(10)
    assert [r.architecture for r in ranked] == top
    probs = [r.probability for r in ranked]
    assert probs == sorted(probs, reverse=True) and all(r.costs['latency'] <= 8.0 for r in ranked)
    expected = expected_latency(strategy.model.model, LatencyTable(table)).item()
    assert expected < sum(sum(row.values()) / len(row) for row in table.values())  # the penalty pulled it down
    with pytest.raises(ValueError, match='latency_limit is set but no latency_table'):
        run(proxyless_rs.strategy.Proxyless(latency_limit=8.0), space_cls=LatencySpace)
    with pytest.raises(ValueError, match='exact=True reproduces NNI'):
        run(proxyless_rs.strategy.Proxyless(exact=True, latency_table=table, latency_limit=8.0),
            space_cls=LatencySpace)


@requires_nni2
def test_search_with_several_costs_exports_within_every_limit():
    from proxyless_rs.costs import predicted_costs
    from test_strategy import run

    costs = {'latency': {'a': {'0': 9.0, '1': 1.0, '2': 6.0}, 'b': {'0': 9.0, '1': 4.0}},
             'params': {'a': {'0': 1.0, '1': 5.0, '2': 1.0}, 'b': {'0': 2.0, '1': 2.0}}}
    spec = {'latency': {'form': 'log', 'weight': 0.1, 'limit': 10.0}, 'params': {'limit': 4.0}}
    strategy = proxyless_rs.strategy.Proxyless(arc_learning_rate=0.05, costs=costs, cost_spec=spec)
    run(strategy, space_cls=LatencySpace, max_epochs=1)
    (architecture,) = strategy.export_top_models()
    predicted = predicted_costs(architecture, strategy.model.model, costs)
    assert predicted['latency'] <= 10.0 and predicted['params'] <= 4.0
    with pytest.raises(ValueError, match='costs and cost_spec go together'):
        run(proxyless_rs.strategy.Proxyless(costs=costs), space_cls=LatencySpace)
    with pytest.raises(ValueError, match=r"cost_spec names costs \['energy'\]"):
        run(proxyless_rs.strategy.Proxyless(costs=costs, cost_spec={'energy': {'limit': 1.0}}), space_cls=LatencySpace)
