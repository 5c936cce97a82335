"""proxyless_rs against NNI 3.0's own classes and strategy: same seeds, same answers (run in the NNI 3.0
environment, `make test-nni3`; skipped with that reason under NNI 2.10).

Compared with NNI 3.0's ``ProxylessMixedLayer`` / ``ProxylessMixedInput`` / ``ProxylessMixedRepeat``:
sampled paths, outputs, weight gradients (bit for bit), alpha gradients (the tolerance of conftest),
state_dict keys; with NNI 3.0's ``Proxyless`` strategy through ``NasExperiment``: the architectures
sampled at every step and the final alphas (``exact=True``). Where NNI 3.0 is wrong, against the
reference: the depth export (exact most probable depth, where NNI 3.0 samples), the penalty's gradient
(finite differences; NNI 3.0's has none), and the weight steps' extra forwards (NNI 3.0 runs them).
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import NNI3, Pair, assert_alpha_close

if not NNI3:
    pytest.skip('NNI 3.0 regression; runs in the NNI 3.0 environment (make test-nni3)', allow_module_level=True)

warnings.filterwarnings('ignore', category=UserWarning)

import nni  # noqa: E402
import torch.nn as nn  # noqa: E402
from nni.nas.evaluator.pytorch import Classification, DataLoader  # noqa: E402
from nni.nas.experiment import NasExperiment  # noqa: E402
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace, Repeat  # noqa: E402
from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule  # noqa: E402
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty  # noqa: E402
from nni.nas.oneshot.pytorch.supermodule import proxyless as nni_proxyless  # noqa: E402
from nni.nas.profiler.pytorch.flops import NumParamsProfiler  # noqa: E402
from nni.nas.strategy import Proxyless as NNIProxyless  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

import proxyless_rs  # noqa: E402
from proxyless_rs import ProxylessMixedInput, ProxylessMixedLayer, ProxylessMixedRepeat  # noqa: E402

OURS = (ProxylessMixedLayer, ProxylessMixedInput)
THEIRS = (nni_proxyless.ProxylessMixedLayer, nni_proxyless.ProxylessMixedInput)


def candidates(dim: int) -> dict[str, nn.Module]:
    # No random ops: NNI 3.0's autograd Function is a node of its own after the candidate's output,
    # where our hook sits on that output, so across layers autograd may reach the two in another
    # order, and candidates drawing random numbers in backward would draw them in another order.
    return {'linear': nn.Linear(dim, dim), 'tanh': nn.Sequential(nn.Linear(dim, dim), nn.Tanh()),
            'relu': nn.Sequential(nn.Linear(dim, dim), nn.ReLU())}


class Net(nn.Module):
    """What NNI 3.0's layers accept: positional inputs; a layer called twice; tuple outputs; an input
    choice; two layers sharing a label and an alpha."""

    def __init__(self, classes, softmax=lambda: nn.Softmax(-1), dim: int = 8):
        super().__init__()
        layer_cls, input_cls = classes
        shared = nn.Parameter(torch.randn(3))
        self.first = layer_cls(candidates(dim), nn.Parameter(torch.randn(3)), softmax(), 'first')
        self.second = layer_cls(candidates(dim), shared, softmax(), 'shared')
        self.third = layer_cls(candidates(dim), shared, softmax(), 'shared')
        self.pair = layer_cls({'plus': Pair(dim, 1.0), 'minus': Pair(dim, -1.0)}, nn.Parameter(torch.randn(2)),
                              softmax(), 'pair')
        self.pick = input_cls(3, 1, nn.Parameter(torch.randn(3)), softmax(), 'pick')
        self.head = nn.Linear(dim, 4)

    def mixed(self):
        return [self.first, self.second, self.third, self.pair, self.pick]

    def forward(self, x):
        a = self.first(self.first(x))
        b = self.second(a)
        c = self.third(b)
        p, q = self.pair(c)
        # Every output reaches the loss: NNI 3.0's Function runs its backward (and its softmax, which
        # GumbelSoftmax makes draw random numbers) even for an output that gets no gradient.
        return self.head(self.pick([a, p, q]) + b) + 0.0 * (p.sum() + q.sum() + c.sum())


def build(classes, seed=0, **kwargs):
    torch.manual_seed(seed)
    return Net(classes, **kwargs)


def step(net, seed):
    torch.manual_seed(seed)
    memo = {}
    for module in net.mixed():
        memo.update(module.resample(memo))
    x, y = torch.randn(5, 8), torch.randint(0, 4, (5,))
    net.zero_grad(set_to_none=True)
    out = net(x)
    F.cross_entropy(out, y).backward()
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in net.named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    return memo, out.detach(), grads


@pytest.mark.parametrize('softmax', ['softmax', 'gumbel'])
def test_steps_equal_nni3(softmax):
    from nni.nas.oneshot.pytorch.supermodule.differentiable import GumbelSoftmax

    make = (lambda: nn.Softmax(-1)) if softmax == 'softmax' else GumbelSoftmax
    ours, theirs = build(OURS, softmax=make), build(THEIRS, softmax=make)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for s in range(8):
        (memo_a, out_a, grads_a), (memo_b, out_b, grads_b) = step(ours, s), step(theirs, s)
        assert memo_a == memo_b
        torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
        assert grads_a.keys() == grads_b.keys()
        for name in grads_b:
            if name.endswith('_arch_alpha'):
                # A layer whose output reaches no loss: NNI 3.0's Function still runs (zero output
                # gradients) and gives alpha a zero gradient; our hook does not run, alpha's stays None.
                ours_alpha = grads_a[name]
                if ours_alpha is None and grads_b[name] is not None and not grads_b[name].any():
                    ours_alpha = torch.zeros_like(grads_b[name])
                assert_alpha_close(ours_alpha, grads_b[name])
            elif grads_b[name] is not None:
                # NNI 3.0's autograd Function materializes an unused output's gradient as zeros, which
                # reach the candidate's weights as a zero gradient where ours leaves None.
                ours_grad = torch.zeros_like(grads_b[name]) if grads_a[name] is None else grads_a[name]
                torch.testing.assert_close(ours_grad, grads_b[name], rtol=0, atol=0, msg=name)
            else:
                assert grads_a[name] is None, name
    for a, b in zip(ours.mixed(), theirs.mixed()):
        assert a.export_probs({}).keys() == b.export_probs({}).keys()


def test_layers_keep_nni3s_surface():
    ours, theirs = build(OURS), build(THEIRS)
    assert ours.first.names == theirs.first.names == ['linear', 'tanh', 'relu']
    assert isinstance(ours.first, type(theirs.first).__mro__[1])  # DifferentiableMixedLayer
    assert isinstance(ours.pick, type(theirs.pick).__mro__[1])
    ours.pick.resample({})
    assert isinstance(ours.pick._sampled, list) and len(ours.pick._sampled) == 1
    # Export: the most probable choice (NNI 3.0's draws one at random).
    with torch.no_grad():
        ours.first._arch_alpha.copy_(torch.tensor([0.0, 3.0, 1.0]))
    assert all(ours.first.export({}) == {'first': 'tanh'} for _ in range(20))


# --- the depth choice -----------------------------------------------------------------------------------


def repeat_pair(depth=(1, 4), seed=0):
    from nni.mutable import Categorical

    out = []
    for cls in (ProxylessMixedRepeat, nni_proxyless.ProxylessMixedRepeat):
        torch.manual_seed(seed)
        repeat = Repeat(lambda i: nn.Sequential(nn.Linear(6, 6), nn.Tanh()), Categorical(list(depth), label='d')
                        if not isinstance(depth, tuple) else depth, label=None if not isinstance(depth, tuple) else 'd')
        memo: dict = {}
        out.append(cls.mutate(repeat, 'blocks', memo, {}))
    return out


def test_depth_choice_samples_trains_and_freezes_like_nni3():
    ours, theirs = repeat_pair()
    assert [b.label for b in ours._choices()] == [b.label for b in theirs.blocks[1:]]
    for s in range(6):
        torch.manual_seed(s)
        a = ours.resample({})
        torch.manual_seed(s)
        b = theirs.resample({})
        assert a == b
        x = torch.randn(3, 6)
        for module in (ours, theirs):
            module.zero_grad(set_to_none=True)
            module(x).square().sum().backward()
        for la, lb in zip(ours._choices(), theirs.blocks[1:]):
            assert_alpha_close(la._arch_alpha.grad, lb._arch_alpha.grad)
    sample = {'d': 3, **{layer.label: '1' for layer in ours._choices()}}
    assert len(ours.freeze(sample)) == len(theirs.freeze(sample)) == 3


@pytest.mark.parametrize('seed', range(5))
def test_depth_export_is_the_exact_most_probable_depth(seed):
    ours, theirs = repeat_pair(depth=[1, 3, 4], seed=seed)
    torch.manual_seed(100 + seed)
    with torch.no_grad():
        for layer in ours._choices():
            layer._arch_alpha.copy_(torch.randn(2) * 2)
    # Reference: enumerate every combination of the chain's skip-or-block choices.
    p = [torch.softmax(layer._arch_alpha.detach().double(), -1)[1].item() for layer in ours._choices()]
    dist = [0.0] * (len(p) + 1)
    for taken in itertools.product([0, 1], repeat=len(p)):
        prob = 1.0
        for t, pi in zip(taken, p):
            prob *= pi if t else 1 - pi
        dist[sum(taken)] += prob
    torch.testing.assert_close(ours.depth_probs().detach().double(), torch.tensor(dist, dtype=torch.float64),
                               rtol=1e-6, atol=1e-7)
    best = max([1, 3, 4], key=lambda d: dist[d - 1])
    exported = ours.export({})
    assert exported['d'] == best
    assert sum(exported[layer.label] == '1' for layer in ours._choices()) == best - 1
    assert {k: round(v, 6) for k, v in ours.export_probs({})['d'].items()} == {d + 1: round(v, 6)
                                                                                 for d, v in enumerate(dist)}


def test_depth_check_contains_returns_the_blocks_errors():
    from nni.mutable import Categorical

    repeat = Repeat(lambda i: LayerChoice([nn.Linear(6, 6), nn.Identity()], label=f'op{i}'),
                    Categorical([1, 2], label='d'))
    ours = ProxylessMixedRepeat.mutate(repeat, 'blocks', {}, {})
    theirs = nni_proxyless.ProxylessMixedRepeat.mutate(repeat, 'blocks', {}, {})
    bad = {'d': 2, 'op0': 0, 'op1': 7}  # op1's value does not exist
    assert theirs.check_contains(bad) is None  # NNI 3.0 discards the block's error
    error = ours.check_contains(bad)
    assert error is not None and '7 not found' in str(error)
    assert ours.check_contains({'d': 2, 'op0': 0, 'op1': 1}) is None


# --- the strategy through NasExperiment ---------------------------------------------------------------


class Space(ModelSpace):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(64, 32)
        self.first = LayerChoice([nn.Linear(32, 32), nn.Sequential(nn.Linear(32, 32), nn.Tanh()),
                                  nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 32))], label='first')
        self.blocks = Repeat(lambda i: nn.Sequential(nn.Linear(32, 32), nn.ReLU()), (1, 3), label='depth')
        self.readout = InputChoice(2, 1, label='readout')
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.stem(x))
        a = self.first(h)
        return self.head(self.readout([a, self.blocks(a)]))


def evaluator(max_epochs=1, **kwargs):
    data = load_digits()
    x, y = torch.tensor(data.data, dtype=torch.float32) / 16.0, torch.tensor(data.target)
    return Classification(**kwargs,
        train_dataloaders=DataLoader(TensorDataset(x[:320], y[:320]), batch_size=32, shuffle=True),
        val_dataloaders=DataLoader(TensorDataset(x[320:480], y[320:480]), batch_size=32, shuffle=True),
        max_epochs=max_epochs, enable_progress_bar=False, logger=False, enable_checkpointing=False,
        enable_model_summary=False, num_classes=10)


def run(strategy, max_epochs=1, seed=0, **evaluator_kwargs):
    torch.manual_seed(seed)
    experiment = NasExperiment(Space(), evaluator(max_epochs, **evaluator_kwargs), strategy)
    experiment.run()
    # Stopped here rather than by NNI's exit handler, which logs to streams pytest has closed by then.
    experiment.stop()
    return experiment


@pytest.fixture
def recorded_samples(monkeypatch):
    """The draws of NNI's one-shot module (``resample()``) and of ours, which draws through a
    ``proxyless_rs.Resampler`` (a module calling both would record each draw twice)."""
    from proxyless_rs._search_step import ProxylessSearchStep

    samples = []
    for cls in (BaseOneShotLightningModule, ProxylessSearchStep):
        def recording(self, *args, _original=cls.resample, **kwargs):
            result = _original(self, *args, **kwargs)
            samples.append(dict(result))
            return result

        monkeypatch.setattr(cls, 'resample', recording)
    return samples


def supernet_layers(strategy):
    return [m for m in strategy.oneshot_module.supernet_modules() if hasattr(m, '_arch_alpha')]


def test_exact_mode_reproduces_nni3s_strategy(recorded_samples):
    # Plain SGD for the weights: NNI 3.0's Function gives the weights of a branch that no gradient
    # reaches (the input choice's other input) a zero gradient where ours leave None, and a weight
    # optimizer with momentum moves a weight with a zero gradient, which SGD without momentum does not.
    # (For the alphas, exact mode gives NNI 3.0's zeros itself.)
    sgd = dict(optimizer=torch.optim.SGD, learning_rate=0.05)
    ours = proxyless_rs.strategy.Proxyless(exact=True)
    run(ours, max_epochs=2, **sgd)
    our_samples = list(recorded_samples)
    recorded_samples.clear()
    theirs = NNIProxyless()
    run(theirs, max_epochs=2, **sgd)
    assert len(our_samples) == len(recorded_samples) == 2 * 2 * 10
    assert our_samples == recorded_samples
    a, b = supernet_layers(ours), supernet_layers(theirs)
    assert [type(m).__module__.split('.')[0] for m in a] == ['proxyless_rs'] * len(a)
    assert [m.label for m in a] == [m.label for m in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(x._arch_alpha, y._arch_alpha, rtol=1e-5, atol=1e-7)


def test_default_search_exports_a_complete_architecture_and_skips_the_weight_steps_extra_forwards(monkeypatch):
    calls = {'ours': 0, 'nni': 0}
    for name, cls in (('ours', ProxylessMixedLayer), ('nni', nni_proxyless.ProxylessMixedLayer)):
        original = cls.forward_path

        def counting(self, index, *args, _name=name, _original=original, **kwargs):
            if not torch.is_grad_enabled():
                calls[_name] += 1
            return _original(self, index, *args, **kwargs)

        monkeypatch.setattr(cls, 'forward_path', counting)
    ours = proxyless_rs.strategy.Proxyless(warmup_epochs=1)
    experiment = run(ours, max_epochs=2)
    theirs = NNIProxyless(warmup_epochs=1)
    run(theirs, max_epochs=2)
    # NNI 3.0 runs the extra candidate forwards in every step, weight steps and warm-up included;
    # ours only in the architecture steps after the warm-up (half the steps of one epoch of two).
    assert 0 < calls['ours'] < calls['nni'] / 3
    # Each optimizer step counts once in the global step, as NNI 3.0's own module counts them: a
    # warm-up epoch of 10 weight steps, then 10 steps of two.
    assert ours.oneshot_module.trainer.global_step == theirs.oneshot_module.trainer.global_step == 10 + 2 * 10
    (architecture,) = ours.list_models()
    assert set(ours.oneshot_module.export()) >= {'first', 'depth', 'readout'}
    assert architecture is not None
    # The k best (3 x 3 depths x 2 = 18 architectures), through NasExperiment as NNI 3.0 asks for
    # them: the first is the export, the depth one choice among the depths, each a frozen space.
    top = experiment.export_top_models(top_k=4, formatter='dict')
    ranked = ours.oneshot_module.export_top(4)
    assert len(top) == 4 and len({str(sorted(a.items())) for a in top}) == 4
    assert [dict(a) for a in top] == [r.architecture for r in ranked]
    assert {k: top[0][k] for k in ('first', 'depth', 'readout')} == \
        {k: ours.oneshot_module.export()[k] for k in ('first', 'depth', 'readout')}
    probs = [r.probability for r in ranked]
    assert probs == sorted(probs, reverse=True)
    for a in top:
        taken = [a[f'depth/in_repeat_{i}'] for i in (1, 2)]
        assert taken == ['1' if i < a['depth'] else '0' for i in (1, 2)]


@pytest.mark.parametrize('mode', ['full', 'two'])
def test_architecture_step_without_weight_gradients_ends_where_a_full_backward_ends(monkeypatch, mode):
    # As tests/test_strategy.py checks under NNI 2.10: with no_weight_grad made a no-op, the same
    # alphas and weights, bit for bit (the depth choice's chain included).
    import contextlib

    import proxyless_rs._search_step as search_step

    def finals(strategy):
        return {name: p.detach().clone() for name, p in strategy.oneshot_module.named_parameters()}

    frozen = proxyless_rs.strategy.Proxyless(mode=mode)
    run(frozen, max_epochs=2)
    monkeypatch.setattr(search_step, 'no_weight_grad', lambda *modules, keep=(): contextlib.nullcontext())
    plain = proxyless_rs.strategy.Proxyless(mode=mode)
    run(plain, max_epochs=2)
    a, b = finals(frozen), finals(plain)
    # The depth choice's skip-or-block layers hold alphas too (blocks.blocks.<i>._arch_alpha).
    assert a.keys() == b.keys() and any(name.startswith('training_module._model.blocks.') and
                                        name.endswith('_arch_alpha') for name in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_freeze_builds_the_child_of_the_searched_space():
    # A layer choice, a depth choice (Repeat) and an input choice, searched by NNI 3.0's NasExperiment:
    # the child is a plain module giving the supernet's outputs with the exported architecture fixed.
    from proxyless_rs.child import ChosenInput

    strategy = proxyless_rs.strategy.Proxyless(arc_learning_rate=0.05)
    run(strategy, max_epochs=1)
    module = strategy.oneshot_module
    exported = module.export()
    supernet = module.training_module._model
    child = proxyless_rs.freeze(supernet, exported)
    assert [type(m).__name__ for m in child.modules() if type(m).__module__.startswith('proxyless_rs')
            and not isinstance(m, ChosenInput)] == []
    assert isinstance(child.blocks, nn.Sequential) and len(child.blocks) == exported['depth']
    memo = dict(exported)
    for m in module.supernet_modules():
        if hasattr(m, 'resample'):
            m.resample(memo)
    supernet.eval()
    child.eval()
    x = torch.rand(5, 64)
    with torch.no_grad():
        assert torch.equal(child(x), supernet(x))
    # The export round-trips through NNI 3.0: ModelSpace.freeze takes it (the depth choice's chain
    # labels included), and NNI's child holds the same weights under the same keys.
    nni_child = Space().freeze(exported)
    nni_child.load_state_dict(child.state_dict())
    nni_child.eval()
    with torch.no_grad():
        assert torch.equal(nni_child(x), child(x))


def penalty_loss(strategy_modules, penalty, task):
    from proxyless_rs.nni.v3.lightning import probabilities_with_grad

    loss, _ = penalty(task, probabilities_with_grad(strategy_modules))
    return loss


class ProfiledSpace(ModelSpace):
    """Layers NNI 3.0's profilers can infer shapes through."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(64, 32)
        self.first = LayerChoice([nn.Linear(32, 32), nn.Sequential(nn.Linear(32, 128), nn.Linear(128, 32))],
                                 label='first')
        self.blocks = Repeat(lambda i: nn.Linear(32, 32), (1, 3), label='depth')
        self.readout = InputChoice(2, 1, label='readout')
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        a = self.first(self.stem(x))
        return self.head(self.readout([a, self.blocks(a)]))


@pytest.mark.parametrize('aggregate', ['add', 'mul'])
def test_penalty_has_the_gradient_of_the_expected_cost(aggregate):
    space = ProfiledSpace()
    profiler = NumParamsProfiler(space, torch.randn(2, 64))
    penalty = ExpectationProfilerPenalty(profiler, baseline=10000.0, scale=0.5, aggregate=aggregate)
    strategy = proxyless_rs.strategy.Proxyless()
    supernet = strategy.mutate_model(space)
    modules = [m for m in supernet.modules() if hasattr(m, '_arch_alpha') or hasattr(m, 'depth_probs')]
    alphas = list({id(m._arch_alpha): m._arch_alpha for m in modules if hasattr(m, '_arch_alpha')}.values())
    with torch.no_grad():
        for alpha in alphas:
            alpha.copy_(torch.randn_like(alpha))
    task = torch.tensor(2.0)
    loss = penalty_loss(modules, penalty, task)
    # The readout does not change the parameter count: its alpha gets no gradient (None, as zeros).
    grads = [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, torch.autograd.grad(loss, alphas,
                                                                                            allow_unused=True))]
    assert sum(g.abs().max() > 0 for g in grads) >= 2  # the layer choice and the depth's chain
    eps = 1e-3
    for alpha, grad in zip(alphas, grads):
        for i in range(len(alpha)):
            with torch.no_grad():
                alpha[i] += eps
                up = penalty_loss(modules, penalty, task).item()
                alpha[i] -= 2 * eps
                down = penalty_loss(modules, penalty, task).item()
                alpha[i] += eps
            assert abs((up - down) / (2 * eps) - grad[i].item()) <= 2e-3 * max(1.0, abs(grad[i].item()))
    # NNI 3.0's way (export_probs, floats) gives alpha no gradient at all.
    nni_loss, _ = penalty(task, {k: v for m in modules for k, v in m.export_probs({}).items()})
    assert not (isinstance(nni_loss, torch.Tensor) and nni_loss.requires_grad)


def test_search_under_a_latency_limit_exports_within_it():
    table = {'first': {'0': 5.0, '1': 6.0, '2': 1.0}, 'readout': {'0': 0.0, '1': 0.0},
             'depth/in_repeat_1': {'0': 0.0, '1': 4.0}, 'depth/in_repeat_2': {'0': 0.0, '1': 4.0}}
    strategy = proxyless_rs.strategy.Proxyless(arc_learning_rate=0.05, latency_table=table, latency_limit=2.0)
    run(strategy, max_epochs=1)
    assert strategy.export_latency() <= 2.0
    architecture = strategy.oneshot_module.export()
    assert architecture['first'] == 2 and architecture['depth'] == 1  # NNI 3.0 names a list's candidates 0, 1, 2


def test_patch_nni_makes_nni3s_strategy_build_our_layers():
    original = nni_proxyless.ProxylessMixedLayer
    with proxyless_rs.patch_nni():
        strategy = NNIProxyless()
        run(strategy)
        kinds = {type(m) for m in strategy.oneshot_module.supernet_modules()}
        assert kinds == {ProxylessMixedLayer, ProxylessMixedInput, ProxylessMixedRepeat}
    assert nni_proxyless.ProxylessMixedLayer is original


def test_layers_build_in_a_plain_script_under_nni_strict_frozen_check(monkeypatch):
    # NNI 3.0's choices refuse to be built outside a ModelSpace (no frozen context) unless its
    # _ENSURE_FROZEN_STRICT is off; ours build in a plain script as they do under NNI 2.10, and
    # leave NNI's setting as it was.
    import nni.mutable.frozen as frozen

    monkeypatch.setattr(frozen, '_ENSURE_FROZEN_STRICT', True)
    paths = {'a': nn.Linear(4, 4), 'b': nn.Linear(4, 4)}
    with pytest.raises(RuntimeError, match='No frozen context'):
        nni_proxyless.ProxylessMixedLayer(paths, nn.Parameter(torch.zeros(2)), nn.Softmax(-1), 'block')
    layer = ProxylessMixedLayer(paths, nn.Parameter(torch.zeros(2)), nn.Softmax(-1), 'block')
    mixed_input = ProxylessMixedInput(3, 1, nn.Parameter(torch.zeros(3)), nn.Softmax(-1), 'readout')
    assert frozen._ENSURE_FROZEN_STRICT is True
    layer.resample({})
    layer(torch.randn(2, 4)).sum().backward()
    assert layer._arch_alpha.grad is not None
    assert mixed_input.resample({})['readout'] in ([0], [1], [2], 0, 1, 2)


class ValueSpace(ModelSpace):
    def __init__(self, unsupported: bool = False):
        super().__init__()
        from nni.nas.nn.pytorch import MutableConv1d, MutableLinear

        width = nni.choice('width', [16, 32])
        self.stem = MutableConv1d(1, width, 3) if unsupported else MutableLinear(64, width)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = self.stem(x[:, None]).mean(-1) if isinstance(self.stem, nn.Conv1d) else self.stem(x)
        return self.head(F.pad(h, (0, 32 - h.shape[-1])))


def test_a_value_choice_is_searched_and_an_unsupported_one_named():
    strategy = proxyless_rs.strategy.Proxyless(arc_learning_rate=0.05)
    torch.manual_seed(0)
    experiment = NasExperiment(ValueSpace(), evaluator(), strategy)
    experiment.run()
    experiment.stop()
    (architecture,) = experiment.export_top_models(formatter='dict')
    assert architecture['width'] in (16, 32)
    assert strategy.supernet.stem._arch_alpha['width'].abs().max() > 1e-2
    # NNI 3.0's ModelSpace.freeze takes the export.
    assert ValueSpace().freeze(architecture).stem.out_features == architecture['width']
    # A value choice in a module NNI has no mixed operation for: NNI 3.0's own refusal, naming it.
    with pytest.raises(TypeError, match=r'Module `stem` of type `MutableConv1d` has dangling mutables'):
        NasExperiment(ValueSpace(unsupported=True), evaluator(), proxyless_rs.strategy.Proxyless()).run()
