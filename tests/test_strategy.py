"""The NNI one-shot workflow: strategy, Lightning module, patch_nni, and their errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import skip_module_unless_nni2

skip_module_unless_nni2()

warnings.filterwarnings('ignore', category=UserWarning)

import nni.retiarii.nn.pytorch as nn  # noqa: E402
import nni.retiarii.strategy as nni_strategy  # noqa: E402
from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule  # noqa: E402
from nni.retiarii import model_wrapper  # noqa: E402
from nni.retiarii.evaluator import FunctionalEvaluator  # noqa: E402
from nni.retiarii.evaluator.pytorch import Classification, DataLoader  # noqa: E402
from nni.retiarii.experiment.pytorch import RetiariiExeConfig, RetiariiExperiment  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

import proxyless_rs  # noqa: E402
from proxyless_rs.strategy import Proxyless  # noqa: E402


@model_wrapper
class DigitsSpace(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(64, 32)
        self.first = nn.LayerChoice([nn.Linear(32, 32), nn.Sequential(nn.Linear(32, 32), nn.Tanh()),
                                     nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 32))], label='first')
        self.second = nn.LayerChoice([nn.Linear(32, 32), nn.Identity()], label='second')
        self.readout = nn.InputChoice(2, 1, label='readout')
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.stem(x))
        a = self.first(h)
        b = self.second(a)
        return self.head(self.readout([a, b]))


@model_wrapper
class RepeatSpace(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Repeat(lambda index: nn.Linear(64, 64), (1, 2), label='depth')
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.blocks(x))


def evaluator(train=True, val=True, max_epochs=1, **kwargs):
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    train_ds, val_ds = TensorDataset(x[:320], y[:320]), TensorDataset(x[320:480], y[320:480])
    return Classification(
        train_dataloaders=DataLoader(train_ds, batch_size=32, shuffle=True) if train else None,
        val_dataloaders=DataLoader(val_ds, batch_size=32, shuffle=True) if val else None,
        max_epochs=max_epochs, enable_progress_bar=False, logger=False, enable_checkpointing=False,
        enable_model_summary=False, **kwargs)


def run(strategy, space_cls=DigitsSpace, seed=0, **evaluator_kwargs):
    torch.manual_seed(seed)
    space = space_cls()
    experiment = RetiariiExperiment(space, evaluator(**evaluator_kwargs), [], strategy)
    config = RetiariiExeConfig()
    config.execution_engine = 'oneshot'
    experiment.run(config)
    return experiment


@pytest.fixture
def recorded_samples(monkeypatch):
    """Every architecture the one-shot module samples, in order: NNI's (``resample()``) and ours, which
    draws through a ``proxyless_rs.Resampler`` (a module calling both would record each draw twice)."""
    from proxyless_rs._search_step import ProxylessSearchStep

    samples = []
    for cls in (BaseOneShotLightningModule, ProxylessSearchStep):
        def recording(self, memo=None, _original=cls.resample):
            result = _original(self, memo)
            samples.append(dict(result))
            return result

        monkeypatch.setattr(cls, 'resample', recording)
    return samples


def test_search_exports_a_complete_architecture():
    strategy = Proxyless()
    experiment = run(strategy, max_epochs=2)
    (architecture,) = experiment.export_top_models()
    assert set(architecture) == {'first', 'second', 'readout'}
    assert [type(m) for m in strategy.model.nas_modules] == [
        proxyless_rs.ProxylessMixedLayer, proxyless_rs.ProxylessMixedLayer, proxyless_rs.ProxylessMixedInput]
    # Each choice is its layer's most probable candidate after the search.
    first, second, readout = strategy.model.nas_modules
    assert architecture['first'] == first.names[int(first._arch_alpha.argmax())]
    assert architecture['second'] == second.names[int(second._arch_alpha.argmax())]
    assert architecture['readout'] == int(readout._arch_alpha.argmax())
    assert strategy.export_top_models() == [architecture]
    # Each optimizer step counts in the global step (NNI 2.10's own module leaves it at 0): two
    # epochs of 10 steps, an architecture and a weight step each.
    assert strategy.model.trainer.global_step == 2 * 10 * 2
    # The three most probable, the first the export; no warning (NNI 2.10 warns and gives one).
    top = strategy.export_top_models(top_k=3)
    probs = [r.probability for r in strategy.model.export_top(3)]
    assert top[0] == architecture and len(top) == 3 and len({str(a) for a in top}) == 3
    assert probs == sorted(probs, reverse=True) and probs[0] > probs[-1]


def test_exact_mode_reproduces_nni_strategy(recorded_samples):
    ours = Proxyless(exact=True)
    run(ours, max_epochs=2)
    our_samples = list(recorded_samples)
    recorded_samples.clear()
    theirs = nni_strategy.Proxyless()
    run(theirs, max_epochs=2)
    assert len(our_samples) == len(recorded_samples) == 2 * 2 * 10
    assert our_samples == recorded_samples
    for a, b in zip(ours.model.nas_modules, theirs.model.nas_modules):
        assert type(a).__module__.startswith('proxyless_rs') and type(b).__module__.startswith('nni')
        torch.testing.assert_close(a._arch_alpha, b._arch_alpha, rtol=1e-5, atol=1e-7)
    assert ours.export_top_models() == theirs.export_top_models()


def test_exact_mode_uses_what_nni_uses_whatever_arc_learning_rate_says(recorded_samples):
    # NNI 2.10 accepts arc_learning_rate and ignores it (its architecture optimizer is fixed at 3e-4).
    ours = Proxyless(exact=True, arc_learning_rate=0.05)
    with pytest.warns(UserWarning, match=r'exact=True reproduces NNI 2.10.*arc_learning_rate=0.05 is ignored'):
        run(ours, max_epochs=1)
    our_samples = list(recorded_samples)
    recorded_samples.clear()
    theirs = nni_strategy.Proxyless(arc_learning_rate=0.05)
    run(theirs, max_epochs=1)
    assert our_samples == recorded_samples
    for a, b in zip(ours.model.nas_modules, theirs.model.nas_modules):
        torch.testing.assert_close(a._arch_alpha, b._arch_alpha, rtol=1e-5, atol=1e-7)
    # (configure_ rather than architecture_optimizers(): that one reads the trainer, a weak reference by now)
    assert ours.model.configure_architecture_optimizers().param_groups[0]['lr'] == 3e-4


def test_weight_step_does_no_alpha_gradient_work(monkeypatch):
    """Without exact, only the sampled candidate runs in the weight step; the arch step runs all."""
    calls = []
    original = proxyless_rs.ProxylessMixedLayer.forward_path

    def counting(self, index, *args, **kwargs):
        calls.append((self.label, torch.is_grad_enabled()))
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(proxyless_rs.ProxylessMixedLayer, 'forward_path', counting)
    strategy = Proxyless()
    run(strategy, max_epochs=1)
    steps = 10
    # Per step and layer: 1 sampled forward in each of the two phases, plus the n-1 unsampled
    # candidates in the architecture step's backward (run under no_grad), when the layer's
    # output reached the loss.
    in_forward = [c for c in calls if c[1]]
    in_backward = [c for c in calls if not c[1]]
    assert len(in_forward) == 2 * 2 * steps
    assert 0 < len(in_backward) <= steps * (3 - 1 + 2 - 1)
    assert all(m.ctx.enabled for m in strategy.model.nas_modules)  # restored after each weight step


def test_the_step_blocks_are_made_once_per_search(monkeypatch):
    # Each block walks every module when made: the strategy makes each once and enters it at every
    # step (a block made at each step cost as much as a small supernet's whole step overhead).
    import proxyless_rs._search_step as search_step

    made = []
    for name in ('no_arch_grad', 'no_weight_grad'):
        original = getattr(search_step, name)
        monkeypatch.setattr(search_step, name,
                            lambda *modules, _name=name, _original=original, **kwargs:
                            made.append(_name) or _original(*modules, **kwargs))
    strategy = Proxyless()
    run(strategy, max_epochs=2)
    assert sorted(made) == ['no_arch_grad', 'no_weight_grad']
    assert all(m.ctx.enabled for m in strategy.model.nas_modules)
    assert all(p.requires_grad for p in strategy.model.parameters())


def test_probabilities_are_logged_every_n_steps(monkeypatch):
    logged = []
    monkeypatch.setattr(proxyless_rs.ProxylessLightningModule, 'log_dict',
                        lambda self, values, **kwargs: logged.append(dict(values)))
    run(Proxyless(), max_epochs=1, log_every_n_steps=5)
    assert len(logged) == 2  # 10 steps, every 5th
    assert set(logged[0]) == {'prob/first/0', 'prob/first/1', 'prob/first/2', 'prob/second/0', 'prob/second/1',
                              'prob/readout/0', 'prob/readout/1'}
    assert sum(v for k, v in logged[0].items() if k.startswith('prob/first/')) == pytest.approx(1.0)


def test_patch_nni_makes_nni_build_our_layers_and_undoes_itself():
    from nni.nas.oneshot.pytorch.supermodule import proxyless as nni_proxyless

    original = nni_proxyless.ProxylessMixedLayer
    with proxyless_rs.patch_nni() as patch:
        assert patch.active
        strategy = nni_strategy.Proxyless()
        run(strategy)
        assert type(strategy.model).__module__.startswith('nni')
        assert {type(m) for m in strategy.model.nas_modules} == {proxyless_rs.ProxylessMixedLayer,
                                                                  proxyless_rs.ProxylessMixedInput}
    assert nni_proxyless.ProxylessMixedLayer is original
    strategy = nni_strategy.Proxyless()
    run(strategy)
    assert type(strategy.model.nas_modules[0]) is original


def test_evaluator_must_be_lightning():
    space = DigitsSpace()
    experiment = RetiariiExperiment(space, FunctionalEvaluator(lambda model: None), [], Proxyless())
    config = RetiariiExeConfig()
    config.execution_engine = 'oneshot'
    with pytest.raises(TypeError, match='needs a Lightning evaluator.*got FunctionalEvaluator'):
        experiment.run(config)


def test_validation_dataloader_is_required():
    with pytest.raises(ValueError, match='needs val_dataloaders on the evaluator'):
        run(Proxyless(), val=False)


@model_wrapper
@model_wrapper
class MixedOperationSpace(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(64, nn.ValueChoice([16, 32], label='width'))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = self.stem(x)
        return self.head(F.pad(h, (0, 32 - h.shape[-1])))


def test_a_value_choice_is_searched_exported_and_frozen():
    strategy = Proxyless(arc_learning_rate=0.05)
    experiment = run(strategy, space_cls=MixedOperationSpace)
    (architecture,) = experiment.export_top_models()
    assert architecture['width'] in (16, 32)
    (stem,) = [m for m in strategy.model.nas_modules if hasattr(m, 'sampling_policy')]
    assert stem._arch_alpha['width'].abs().max() > 1e-2  # the architecture optimizer moved it
    child = proxyless_rs.freeze(strategy.model.model.model, architecture)
    assert type(child.stem) is torch.nn.Linear and child.stem.out_features == architecture['width']


@model_wrapper
class UnsupportedSpace(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(1, nn.ValueChoice([4, 8], label='width'), 3)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        h = self.stem(x[:, None]).mean(-1)
        return self.head(F.pad(h, (0, 8 - h.shape[-1])))


def test_unsupported_primitive_is_named():
    # A value choice in a module NNI has no mixed operation for.
    with pytest.raises(TypeError, match=r"supports LayerChoice, InputChoice, Repeat, Cell and value choices in NNI's "
                                        r"mixed operations; module 'stem' of type Conv1d is not supported"):
        run(Proxyless(), space_cls=UnsupportedSpace)


def test_depth_choice_is_searched_and_exported_as_its_most_probable_depth():
    strategy = Proxyless(arc_learning_rate=0.05)
    experiment = run(strategy, space_cls=RepeatSpace, max_epochs=2)
    repeat = next(m for m in strategy.model.nas_modules if isinstance(m, proxyless_rs.ProxylessMixedRepeat))
    (inner,) = [m for m in strategy.model.nas_modules if isinstance(m, proxyless_rs.ProxylessMixedLayer)]
    assert inner.label == 'depth/in_repeat_1' and inner.op_names == ['0', '1']
    assert inner._arch_alpha.abs().max() > 1e-2  # the architecture optimizer moved it
    probs = torch.softmax(inner._arch_alpha.detach(), -1)
    torch.testing.assert_close(repeat.depth_probs().detach(), probs)  # depth 1 + (block taken or not)
    (architecture,) = experiment.export_top_models()
    assert architecture['depth'] == 1 + int(probs[1] > probs[0])
    assert architecture['depth/in_repeat_1'] == ('1' if architecture['depth'] == 2 else '0')
    # The child: freeze gives the supernet's outputs with the architecture fixed, and the export
    # round-trips through NNI 2.10's fixed_arch (the chain's labels included), whose child holds the
    # same weights under the same keys.
    from nni.retiarii import fixed_arch

    supernet = strategy.model.model.model  # the one-shot module > the evaluator's module > the space
    child = proxyless_rs.freeze(supernet, architecture)
    memo = dict(architecture)
    for module in strategy.model.nas_modules:
        memo.update(module.resample(memo))
    supernet.eval()
    child.eval()
    x = torch.rand(6, 64)
    with torch.no_grad():
        assert torch.equal(child(x), supernet(x))
    with fixed_arch(architecture):
        nni_child = RepeatSpace()
    nni_child.load_state_dict(child.state_dict())
    nni_child.eval()
    with torch.no_grad():
        assert torch.equal(nni_child(x), child(x))


def count_hook_forwards(monkeypatch) -> list:
    """Every candidate forward run by a binary-gate backward (under no_grad), as (label, index)."""
    calls = []
    original = proxyless_rs.ProxylessMixedLayer.forward_path

    def counting(self, index, *args, **kwargs):
        if not torch.is_grad_enabled():
            calls.append((self.label, index))
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(proxyless_rs.ProxylessMixedLayer, 'forward_path', counting)
    return calls


def test_warmup_epochs_do_no_architecture_work(monkeypatch):
    calls = count_hook_forwards(monkeypatch)
    torch.manual_seed(0)
    strategy = Proxyless(warmup_epochs=1, arc_learning_rate=0.05)
    run(strategy, max_epochs=1)
    assert calls == []
    assert all(m._arch_alpha.grad is None for m in strategy.model.nas_modules)
    run(Proxyless(warmup_epochs=1, arc_learning_rate=0.05), max_epochs=2)
    assert calls  # the second epoch searches


def test_arch_update_every_k_steps(monkeypatch):
    steps = []
    original = proxyless_rs.ProxylessLightningModule.manual_backward
    def recording(self, loss, *args, **kwargs):
        steps.append(self.trainer.global_step)
        return original(self, loss, *args, **kwargs)

    monkeypatch.setattr(proxyless_rs.ProxylessLightningModule, 'manual_backward', recording)
    run(Proxyless(arch_update_every=3), max_epochs=1)
    # 10 steps: an architecture step at batches 0, 3, 6, 9 (manual_backward), a weight step at each.
    assert len(steps) == 10 + 4
    with pytest.raises(ValueError, match='arch_update_every >= 1'):
        run(Proxyless(arch_update_every=0), max_epochs=1)


@pytest.mark.parametrize('mode', ['full', 'two'])
def test_architecture_step_without_weight_gradients_ends_where_a_full_backward_ends(monkeypatch, mode):
    # The strategy's architecture step runs under no_weight_grad; with it made a no-op (every weight
    # gradient computed, then cleared by the weight step's zero_grad, as in NNI) the search ends with
    # the same alphas and weights, bit for bit.
    import contextlib

    import proxyless_rs._search_step as search_step

    def finals(strategy):
        return {name: p.detach().clone() for name, p in strategy.model.named_parameters()}

    frozen = Proxyless(mode=mode)
    run(frozen, max_epochs=2)
    monkeypatch.setattr(search_step, 'no_weight_grad', lambda *modules, keep=(): contextlib.nullcontext())
    plain = Proxyless(mode=mode)
    run(plain, max_epochs=2)
    a, b = finals(frozen), finals(plain)
    assert a.keys() == b.keys() and any(name.endswith('_arch_alpha') for name in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
