"""Resume after a crash: a search SIGKILLed mid-epoch and resumed from its last checkpoint ends with
the same alphas, weights, optimizer states and export as the same search never interrupted, bit
for bit (CPU). Each search runs in its own process (tests/resume_worker.py) so that the kill is
real; the worker waits at the chosen step for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import proxyless_rs

WORKER = Path(__file__).with_name('resume_worker.py')


def worker(*args: str, wait: bool = True) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(WORKER.parent) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    process = subprocess.Popen([sys.executable, str(WORKER), *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    if wait:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    return process


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
def test_a_script_killed_mid_epoch_resumes_to_the_same_search(tmp_path, mode):
    (tmp_path / 'whole').mkdir()
    worker('script', mode, str(tmp_path / 'whole'))
    whole = torch.load(tmp_path / 'whole' / 'result.pt', weights_only=False)
    resumed = killed_and_resumed('script', mode, tmp_path / 'resumed', '1,4')
    assert_same(resumed, whole)
    alpha = whole['state']['1._arch_alpha']
    assert not torch.equal(alpha, torch.zeros_like(alpha))  # the search moved it


@pytest.mark.parametrize('mode', ['full', 'two'])
def test_the_strategy_killed_mid_epoch_resumes_to_the_same_search(tmp_path, mode):
    # The installed NNI's experiment, a cost limit with a Lagrange multiplier (its state is in the
    # checkpoint too), a kill in the second epoch, resumed from the first epoch's last.ckpt.
    (tmp_path / 'whole').mkdir()
    worker('strategy', mode, str(tmp_path / 'whole'))
    whole = torch.load(tmp_path / 'whole' / 'result.pt', weights_only=False)
    resumed = killed_and_resumed('strategy', mode, tmp_path / 'resumed', '1,3')
    assert_same(resumed, whole)
    assert whole['multiplier']['value'] > 0  # the limit binds: the multiplier moved, and resumed where it was


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
