"""Resume after a crash: a search SIGKILLed mid-epoch and resumed from its last checkpoint ends with
the same alphas, weights, optimizer states and export as the same search never interrupted, bit
for bit (CPU). Each search runs in its own process (tests/resume_worker.py) so that the kill is
real; the worker waits at the chosen step for it.

Across NNI versions: tests/data/checkpoints/ holds a script's and the strategy's checkpoint
written under NNI 2.10 and under NNI 3.0 (``make checkpoint-fixtures``); this suite, run under
either, loads the other's, and checks that what it writes itself has the committed layout."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import proxyless_rs
from proxyless_rs.checkpoint import supernet_state_dict, written_under
from proxyless_rs.nni.version import NNI3, NNI_NAME

WORKER = Path(__file__).with_name('resume_worker.py')
FIXTURES = Path(__file__).with_name('data') / 'checkpoints'
HERE, OTHER = ('nni3', 'nni2') if NNI3 else ('nni2', 'nni3')
FIXTURE_FILE = {'script': '{}-script.pt', 'strategy': '{}-strategy.ckpt'}
WRITTEN_FILE = {'script': 'last.pt', 'strategy': 'last.ckpt'}


def worker(*args: str, wait: bool = True, check: bool = True) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(WORKER.parent) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    process = subprocess.Popen([sys.executable, str(WORKER), *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    if wait:
        process.output, _ = process.communicate(timeout=300)  # type: ignore[attr-defined]
        if check:
            assert process.returncode == 0, process.output  # type: ignore[attr-defined]
    return process


@pytest.fixture(scope='module')
def whole_search(tmp_path_factory):
    """The uninterrupted searches, each run once for this module: (kind, mode) -> its folder."""
    runs: dict[tuple[str, str], Path] = {}

    def run(kind: str, mode: str) -> Path:
        if (kind, mode) not in runs:
            out = tmp_path_factory.mktemp(f'whole-{kind}-{mode}')
            worker(kind, mode, str(out))
            runs[kind, mode] = out
        return runs[kind, mode]

    return run


def killed_and_resumed(kind: str, mode: str, out: Path, kill_at: str) -> dict:
    out.mkdir()
    process = worker(kind, mode, str(out), '--kill-at', kill_at, wait=False)
    deadline = time.monotonic() + 300
    while not (out / 'killable').exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, 'the worker never reached the step to kill it at'
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (out / 'result.pt').exists()
    worker(kind, mode, str(out), '--resume')
    return torch.load(out / 'result.pt', weights_only=False)


def assert_same(a, b, where: str = '') -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f'{where}/{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


@pytest.mark.parametrize('mode', ['full', 'two'])
def test_a_script_killed_mid_epoch_resumes_to_the_same_search(tmp_path, whole_search, mode):
    whole = torch.load(whole_search('script', mode) / 'result.pt', weights_only=False)
    resumed = killed_and_resumed('script', mode, tmp_path / 'resumed', '1,4')
    assert_same(resumed, whole)
    alpha = whole['state']['1._arch_alpha']
    assert not torch.equal(alpha, torch.zeros_like(alpha))  # the search moved it


@pytest.mark.parametrize('mode', ['full', 'two'])
def test_the_strategy_killed_mid_epoch_resumes_to_the_same_search(tmp_path, whole_search, mode):
    # The installed NNI's experiment, a cost limit with a Lagrange multiplier (its state is in the
    # checkpoint too), a kill in the second epoch, resumed from the first epoch's last.ckpt.
    whole = torch.load(whole_search('strategy', mode) / 'result.pt', weights_only=False)
    resumed = killed_and_resumed('strategy', mode, tmp_path / 'resumed', '1,3')
    assert_same(resumed, whole)
    assert whole['multiplier']['value'] > 0  # the limit binds: the multiplier moved, and resumed where it was


@pytest.mark.parametrize('mode', ['full', 'two'])
def test_a_search_of_value_choices_killed_mid_epoch_resumes_to_the_same_search(tmp_path, whole_search, mode):
    whole = torch.load(whole_search('values', mode) / 'result.pt', weights_only=False)
    resumed = killed_and_resumed('values', mode, tmp_path / 'resumed', '1,3')
    assert_same(resumed, whole)
    alphas = [value for key, value in whole['state'].items() if key.endswith('_arch_alpha.width')]
    assert len(alphas) == 2 and torch.equal(alphas[0], alphas[1])  # one alpha, shared by both operations
    assert alphas[0].abs().max() > 1e-2 and whole['export']['width'] in (16, 32)


@pytest.mark.parametrize('mode', ['full', 'two'])
def test_a_search_of_cells_killed_mid_epoch_resumes_to_the_same_search(tmp_path, whole_search, mode):
    whole = torch.load(whole_search('cells', mode) / 'result.pt', weights_only=False)
    resumed = killed_and_resumed('cells', mode, tmp_path / 'resumed', '1,3')
    assert_same(resumed, whole)
    depth = [value for key, value in whole['state'].items() if key.endswith('_arch_alpha.depth')]
    assert len(depth) == 1 and depth[0].abs().max() > 1e-2  # the depth expression's alpha moved
    assert whole['export']['depth'] in (1, 2) and whole['export']['cell/op_2_0'] in ('linear', 'tanh', 'skip')


def test_a_checkpoint_from_elsewhere_is_refused_by_the_strategys_module():
    from proxyless_rs._search_step import ProxylessSearchStep

    class Lightning:  # what the step sits on in both NNI versions' modules
        def on_load_checkpoint(self, checkpoint):
            pass

    class Module(ProxylessSearchStep, Lightning):
        pass

    with pytest.raises(ValueError, match='not written by proxyless_rs'):
        Module().on_load_checkpoint({'state_dict': {}})


def test_a_checkpoint_of_another_search_space_is_refused_naming_the_first_layer_that_differs():
    from proxyless_rs._search_step import ProxylessSearchStep

    class Lightning(nn.Module):
        def on_load_checkpoint(self, checkpoint):
            pass

    class Module(ProxylessSearchStep, Lightning):
        def __init__(self, sizes):
            super().__init__()
            self.cost_spec = {}
            self.layers = nn.ModuleList([
                proxyless_rs.ProxylessMixedLayer([(f'op{i}', nn.Identity()) for i in range(n)],
                                                 nn.Parameter(torch.zeros(n)), nn.Softmax(-1), f'block{b}')
                for b, n in enumerate(sizes)])

    def checkpoint_of(module):
        return {'state_dict': module.state_dict(), 'proxyless_rs': {
            'rng': proxyless_rs.checkpoint.rng_state(), 'optimizer_progress': None, 'multipliers': {}}}

    Module([3, 2]).on_load_checkpoint(checkpoint_of(Module([3, 2])))  # the same space loads
    with pytest.raises(ValueError, match=r"ProxylessMixedLayer 'block1': .*'layers.1._arch_alpha' has 4 candidates "
                                         r"there, 2 here"):
        Module([3, 2]).on_load_checkpoint(checkpoint_of(Module([3, 4])))
    with pytest.raises(ValueError, match=r"ProxylessMixedLayer 'block2': .*no 'layers.2._arch_alpha'"):
        Module([3, 2, 2]).on_load_checkpoint(checkpoint_of(Module([3, 2])))
    with pytest.raises(ValueError, match=r"layers this one lacks \(\['layers.2._arch_alpha'\]\)"):
        Module([3, 2]).on_load_checkpoint(checkpoint_of(Module([3, 2, 5])))


def layout(value):
    """What of a checkpoint must match across versions and over time: its keys, and each tensor's
    shape and dtype, down the nesting (numbers and strings by type)."""
    if isinstance(value, torch.Tensor):
        return ('tensor', tuple(value.shape), str(value.dtype))
    if isinstance(value, dict):
        return {key: layout(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [layout(item) for item in value]
    return type(value).__name__


def fixture(nni: str, kind: str) -> Path:
    return FIXTURES / FIXTURE_FILE[kind].format(nni)


def optimizer_states(checkpoint: dict, kind: str) -> list[dict]:
    return [checkpoint['weights'], checkpoint['arch']] if kind == 'script' else checkpoint['optimizer_states']


@pytest.mark.parametrize('kind', ['script', 'strategy'])
def test_a_checkpoint_written_here_has_the_committed_layout(whole_search, kind):
    # The cross-version tests load the committed checkpoints: they test today's format only as long
    # as what this version writes today is laid out as they are (else: make checkpoint-fixtures).
    written = torch.load(whole_search(kind, 'full') / WRITTEN_FILE[kind], weights_only=True)
    committed = torch.load(fixture(HERE, kind), weights_only=True)
    # The modules' state, the optimizers' state per parameter (their param_groups also get options
    # from the torch release) and what proxyless_rs adds.
    modules, extra = ('model', 'rng') if kind == 'script' else ('state_dict', 'proxyless_rs')
    assert written.keys() == committed.keys()
    for key in (modules, extra):
        assert layout(written[key]) == layout(committed[key]), key
    assert len(optimizer_states(written, kind)) == len(optimizer_states(committed, kind))
    for here, there in zip(optimizer_states(written, kind), optimizer_states(committed, kind)):
        assert layout(here['state']) == layout(there['state'])
        assert [g['params'] for g in here['param_groups']] == [g['params'] for g in there['param_groups']]
    if kind == 'script':
        assert layout(written['model']) == layout(torch.load(fixture(OTHER, kind), weights_only=True)['model'])
    else:
        assert written_under(written) == written_under(committed) == NNI_NAME
        other = supernet_state_dict(fixture(OTHER, kind))
        assert layout(supernet_state_dict(written)) == layout(other)


def test_a_scripts_checkpoint_written_under_the_other_nni_resumes_here(tmp_path):
    # The layers' state dict keys are the same under both NNI versions: the recipe's checkpoint of
    # one epoch, written under the other NNI, loads here (strictly) and the search goes on from it.
    saved = torch.load(fixture(OTHER, 'script'), weights_only=True)
    shutil.copy(fixture(OTHER, 'script'), tmp_path / 'last.pt')
    worker('script', 'full', str(tmp_path), '--resume', '--epochs', '1')  # nothing left to run: the loaded state
    loaded = torch.load(tmp_path / 'result.pt', weights_only=False)
    assert_same(loaded['state'], saved['model'])
    for here, there in zip(loaded['optimizers'], [saved['weights'], saved['arch']]):
        # The optimizers' state per parameter (their param_groups get options from the torch release).
        assert_same(here['state'], there['state'])
        assert [g['params'] for g in here['param_groups']] == [g['params'] for g in there['param_groups']]
    worker('script', 'full', str(tmp_path), '--resume', '--epochs', '2')
    resumed = torch.load(tmp_path / 'result.pt', weights_only=False)
    assert resumed['state'].keys() == saved['model'].keys()
    for key, value in saved['model'].items():
        assert not torch.equal(resumed['state'][key], value), key  # every tensor moved on from the checkpoint


def test_the_strategys_supernet_written_under_the_other_nni_loads_here():
    from resume_worker import supernet

    if NNI3:
        import nni.mutable.frozen

        nni.mutable.frozen._ENSURE_FROZEN_STRICT = False
    path = fixture(OTHER, 'strategy')
    assert written_under(path) == ('NNI 2.10' if NNI3 else 'NNI 3.0')
    saved = supernet_state_dict(path)
    assert {'stem.weight', 'first._arch_alpha', 'first.0.weight', 'readout._arch_alpha', 'head.bias'} <= set(saved)
    net = supernet()
    net.load_state_dict(saved)  # strict: the same keys, none missing, none left over
    assert_same(net.state_dict(), saved)
    child = proxyless_rs.freeze(net).eval()  # the child network of the other NNI's search, here
    x = torch.randn(4, 64)
    with torch.no_grad():
        out = child(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    inherited = [p for p in child.parameters()]
    assert inherited and all(any(torch.equal(p, value) for value in saved.values()) for p in inherited)


def test_the_strategy_refuses_to_resume_a_checkpoint_written_under_the_other_nni(tmp_path):
    shutil.copy(fixture(OTHER, 'strategy'), tmp_path / 'last.ckpt')
    process = worker('strategy', 'full', str(tmp_path), '--resume', check=False)
    assert process.returncode != 0
    written = 'NNI 2.10' if NNI3 else 'NNI 3.0'
    assert (f"this checkpoint was written by proxyless_rs's strategy under {written}" in process.output)  # type: ignore[attr-defined]
    assert f'a search under {NNI_NAME} cannot resume it' in process.output  # type: ignore[attr-defined]
    assert 'proxyless_rs.checkpoint.supernet_state_dict(path)' in process.output  # type: ignore[attr-defined]


def test_supernet_state_dict_refuses_what_is_not_a_strategys_checkpoint():
    with pytest.raises(ValueError, match='not a Lightning checkpoint of a one-shot strategy'):
        supernet_state_dict({'state_dict': {'layers.0._arch_alpha': torch.zeros(2)}})


def test_a_truncated_checkpoint_is_refused_naming_the_file_before_anything_changes(tmp_path, whole_search):
    # A crash while Lightning wrote last.ckpt leaves it cut short: torch.load's bare OSError named nothing.
    whole = whole_search('strategy', 'full')
    truncated = tmp_path / 'last.ckpt'
    data = (whole / 'last.ckpt').read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    message = (rf"checkpoint '{truncated}' is unreadable: not a complete torch checkpoint .* nothing was loaded or "
               'changed')
    with pytest.raises(ValueError, match=message):
        supernet_state_dict(truncated)
    out = tmp_path / 'resumed'
    out.mkdir()
    (out / 'last.ckpt').write_bytes(data[:len(data) // 2])
    process = worker('strategy', 'full', str(out), '--resume', check=False)
    assert process.returncode != 0
    assert 'is unreadable: not a complete torch checkpoint' in process.output  # type: ignore[attr-defined]
    assert not (out / 'result.pt').exists()


def test_parameters_arch_means_the_same_under_both_nni_versions():
    # A script's two optimizers, built as docs/nni.md's recipe builds them, hold the same parameters
    # in the same order under NNI 2.10 and NNI 3.0 (NNI 3.0's own parameters() includes the alphas,
    # NNI 2.10's leaves them out: each keeps its meaning without arch).
    if NNI3:
        import nni.mutable.frozen

        nni.mutable.frozen._ENSURE_FROZEN_STRICT = False
    alpha = nn.Parameter(torch.zeros(2))
    layer = proxyless_rs.ProxylessMixedLayer([('a', nn.Linear(4, 4)), ('b', nn.Linear(4, 4))], alpha, nn.Softmax(-1),
                                             'block')
    mixed_input = proxyless_rs.ProxylessMixedInput(3, 1, nn.Parameter(torch.zeros(3)), nn.Softmax(-1), 'readout')
    assert list(layer.parameters(arch=True)) == [alpha]
    weights = [layer.a.weight, layer.a.bias, layer.b.weight, layer.b.bias]
    assert list(map(id, layer.parameters(arch=False))) == list(map(id, weights))
    assert list(map(id, layer.parameters())) == list(map(id, [alpha, *weights] if NNI3 else weights))
    assert list(layer.parameters(False)) == ([alpha] if NNI3 else [])  # recurse=False, as nn.Module takes it
    assert list(layer.parameters(recurse=False, arch=False)) == []
    assert list(mixed_input.parameters(arch=True)) == [mixed_input._arch_alpha]
    assert list(mixed_input.parameters(arch=False)) == []
