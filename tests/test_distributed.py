"""Data-parallel search on torch.distributed: 2 processes, gloo on CPU (and NCCL on two GPUs where
there are two; a world of one on one GPU), loopback only."""

from __future__ import annotations

import ast
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import distributed_workers
from conftest import NNI3

two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2,
                              reason=f'NCCL needs 2 GPUs; {torch.cuda.device_count()} available')

WORLD = 2
JOIN_TIMEOUT = 180  # seconds; the process group's own timeout is distributed_workers.TIMEOUT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(target, out_dir: Path, world: int = WORLD, **kwargs) -> tuple[list[int | None], float]:
    """Runs target(rank, world, port, out_dir, **kwargs) in ``world`` spawned processes; never hangs."""
    context = multiprocessing.get_context('spawn')
    port = free_port()
    # A rank still running 15 s before the join's limit writes its stacks to rank<r>.hang.
    processes = [context.Process(target=distributed_workers.watched,
                                 args=(target, JOIN_TIMEOUT - 15, rank, world, port, str(out_dir)), kwargs=kwargs)
                 for rank in range(world)]
    start = time.monotonic()
    for p in processes:
        p.start()
    for p in processes:
        p.join(max(1.0, JOIN_TIMEOUT - (time.monotonic() - start)))
    for p in processes:
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in processes], time.monotonic() - start


def errors(out_dir: Path) -> str:
    return '\n'.join(p.read_text() for p in sorted([*out_dir.glob('*.err'), *out_dir.glob('*.hang')]))


@pytest.mark.parametrize('backend', ['gloo', pytest.param('nccl', marks=two_gpus)])
def test_plain_pytorch_search_on_two_ranks(tmp_path, backend):
    codes, _ = launch(distributed_workers.plain_search, tmp_path, steps=20, backend=backend)
    assert codes == [0, 0], errors(tmp_path)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(WORLD))
    # Every rank sampled the same architectures, and they varied.
    assert r0['samples'] == r1['samples']
    assert len({repr(sorted(s.items())) for s in r0['samples']}) > 1
    # Alphas and weights are bit-identical across ranks afterwards.
    assert r0['state'].keys() == r1['state'].keys()
    for key in r0['state']:
        assert torch.equal(r0['state'][key], r1['state'][key]), key
    # The averaged alpha gradient of step 0 is the mean of the ranks' single-process gradients.
    for averaged, local0, local1 in zip(r0['step0']['averaged'], r0['step0']['local'], r1['step0']['local']):
        torch.testing.assert_close(averaged, (local0 + local1) / 2, rtol=0, atol=1e-6)
    # The shards differ, so the average means something (a layer off the path has 0 on both).
    assert any(not torch.allclose(a, b) for a, b in zip(r0['step0']['local'], r1['step0']['local']))
    for a, b in zip(r0['step0']['averaged'], r1['step0']['averaged']):
        assert torch.equal(a, b)
    # No context entries are left over.
    assert r0['saved_entries'] == r1['saved_entries'] == [0, 0, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_an_nccl_search_on_one_gpu(tmp_path):
    # NCCL refuses two ranks on one GPU, so with one GPU the NCCL path (the draw rounds' and the
    # alpha gradient's collectives on CUDA tensors) runs as a world of one.
    codes, _ = launch(distributed_workers.plain_search, tmp_path, world=1, steps=20, backend='nccl')
    assert codes == [0], errors(tmp_path)
    r0 = torch.load(tmp_path / 'rank0.pt', weights_only=False)
    assert len({repr(sorted(s.items())) for s in r0['samples']}) > 1
    # A world of one averages over itself: the gradient DDP leaves is the single-process one.
    for averaged, local in zip(r0['step0']['averaged'], r0['step0']['local']):
        torch.testing.assert_close(averaged, local, rtol=1e-5, atol=1e-6)
    assert any(bool(g.abs().sum() > 0) for g in r0['step0']['local'])
    assert all(bool(v.isfinite().all()) for v in r0['state'].values() if v.is_floating_point())
    assert r0['saved_entries'] == [0, 0, 0]


@pytest.mark.parametrize('kind', ['layers', 'values', 'cells'])
def test_lightning_ddp_search_exports_one_architecture(tmp_path, kind):
    # NNI 2.10's RetiariiExperiment or NNI 3.0's NasExperiment, whichever NNI is installed; ranks
    # seeded differently on purpose: one draw for all ranks, or their weights would differ.
    worker = distributed_workers.lightning_search_nni3 if NNI3 else distributed_workers.lightning_search
    codes, _ = launch(worker, tmp_path, kind=kind)
    assert codes == [0, 0], errors(tmp_path)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(WORLD))
    assert r0['architecture'] == r1['architecture']
    # The strategy drew in rounds: one for each architecture and each weight step of 6 training steps.
    assert r0['rounds'] == r1['rounds'] == 12
    cells = {f'cell/{choice}_{node}_0' for choice in ('op', 'input') for node in (1, 2)} | {'depth'}
    assert set(r0['architecture']) == {'layers': {'first', 'readout'}, 'values': {'width'}, 'cells': cells}[kind]
    for a, b in zip(r0['alphas'], r1['alphas']):
        assert torch.equal(a, b)
    for key in r0['weights']:
        assert torch.equal(r0['weights'][key], r1['weights'][key]), key
    assert r0['saved_entries'] == r1['saved_entries'] == [0] * len(r0['alphas'])
    assert any(float(alpha.abs().max()) > 1e-2 for alpha in r0['alphas'])  # the search moved them


@pytest.mark.parametrize('rounds, failed', [(True, 'agreeing on the draws of a round'),
                                            (False, 'broadcasting the sampled architecture')])
def test_a_dead_rank_makes_the_other_fail_clearly_and_soon(tmp_path, rounds, failed):
    codes, elapsed = launch(distributed_workers.plain_search, tmp_path, steps=20, die_at=5, rounds=rounds)
    assert codes[1] == 3  # the rank that died
    assert codes[0] not in (0, None)  # the survivor failed rather than hanging or succeeding
    message = (tmp_path / 'rank0.err').read_text()
    assert f'proxyless_rs.distributed: {failed} failed on rank 0' in message
    assert elapsed < distributed_workers.TIMEOUT.total_seconds() + 60


@pytest.mark.parametrize('world', [2, 4])
def test_a_search_step_makes_the_same_collectives_whatever_the_depth(tmp_path, world):
    # Per search step: a draw round for each of the two steps and the averaged alpha gradient of the
    # architecture step's backward: 3 at any depth; a draw broadcast on its own is one per layer.
    codes, _ = launch(distributed_workers.count_collectives, tmp_path, world=world, layers=(2, 16))
    assert codes == [0] * world, errors(tmp_path)
    for rank in range(world):
        results = torch.load(tmp_path / f'rank{rank}.pt', weights_only=False)
        counts = {(r['layers'], r['rounds']): set(r['collectives']) for r in results}
        assert counts == {(2, True): {3}, (16, True): {3}, (2, False): {2 * 2 + 1}, (16, False): {2 * 16 + 1}}


def test_ranks_that_draw_differently_fail_at_the_next_round(tmp_path):
    codes, _ = launch(distributed_workers.diverging_draws, tmp_path)
    assert all(code not in (0, None) for code in codes)
    for rank in range(WORLD):
        message = (tmp_path / f'rank{rank}.err').read_text()
        assert 'the ranks drew different architectures in the previous draw round' in message


@pytest.mark.multinode
def test_two_machines_as_two_node_groups_through_torchrun_export_one_architecture():
    # docs/distributed.md's recipe for several machines, both "machines" on this one: each node runs
    # torchrun with its --node_rank, the rendezvous at node 0's address; every rank exports one
    # architecture (the example gathers them on rank 0).
    port = free_port()
    example = Path(__file__).resolve().parents[1] / 'examples' / 'digits_ddp.py'
    nodes = [subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--node_rank',
                               str(node), '--nproc_per_node', '1', '--master_addr', '127.0.0.1', '--master_port',
                               str(port), str(example), '--epochs', '1'],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for node in (0, 1)]
    try:
        outputs = [node.communicate(timeout=JOIN_TIMEOUT)[0] for node in nodes]
    finally:
        for node in nodes:  # a node still running (a hang) goes, with its workers: no stray processes
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    assert [node.returncode for node in nodes] == [0, 0], '\n'.join(outputs)
    line = next(line for line in outputs[0].splitlines() if line.startswith('exported on every rank: '))
    gathered = ast.literal_eval(line.removeprefix('exported on every rank: ').split('; test accuracy')[0])
    assert len(gathered) == 2 and gathered[0] == gathered[1] and gathered[0]
