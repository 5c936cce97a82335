"""Data-parallel search on torch.distributed: 2 processes, gloo on CPU (and NCCL on two GPUs where
there are two), loopback only."""

from __future__ import annotations

import multiprocessing
import socket
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


def launch(target, out_dir: Path, **kwargs) -> tuple[list[int | None], float]:
    """Runs target(rank, WORLD, port, out_dir, **kwargs) in WORLD spawned processes; never hangs."""
    context = multiprocessing.get_context('spawn')
    port = free_port()
    # A rank still running 15 s before the join's limit writes its stacks to rank<r>.hang.
    processes = [context.Process(target=distributed_workers.watched,
                                 args=(target, JOIN_TIMEOUT - 15, rank, WORLD, port, str(out_dir)), kwargs=kwargs)
                 for rank in range(WORLD)]
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


@pytest.mark.parametrize('kind', ['layers', 'values', 'cells'])
def test_lightning_ddp_search_exports_one_architecture(tmp_path, kind):
    # NNI 2.10's RetiariiExperiment or NNI 3.0's NasExperiment, whichever NNI is installed; ranks
    # seeded differently on purpose: one draw for all ranks, or their weights would differ.
    worker = distributed_workers.lightning_search_nni3 if NNI3 else distributed_workers.lightning_search
    codes, _ = launch(worker, tmp_path, kind=kind)
    assert codes == [0, 0], errors(tmp_path)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(WORLD))
    assert r0['architecture'] == r1['architecture']
    cells = {f'cell/{choice}_{node}_0' for choice in ('op', 'input') for node in (1, 2)} | {'depth'}
    assert set(r0['architecture']) == {'layers': {'first', 'readout'}, 'values': {'width'}, 'cells': cells}[kind]
    for a, b in zip(r0['alphas'], r1['alphas']):
        assert torch.equal(a, b)
    for key in r0['weights']:
        assert torch.equal(r0['weights'][key], r1['weights'][key]), key
    assert r0['saved_entries'] == r1['saved_entries'] == [0] * len(r0['alphas'])
    assert any(float(alpha.abs().max()) > 1e-2 for alpha in r0['alphas'])  # the search moved them


def test_a_dead_rank_makes_the_other_fail_clearly_and_soon(tmp_path):
    codes, elapsed = launch(distributed_workers.plain_search, tmp_path, steps=20, die_at=5)
    assert codes[1] == 3  # the rank that died
    assert codes[0] not in (0, None)  # the survivor failed rather than hanging or succeeding
    message = (tmp_path / 'rank0.err').read_text()
    assert 'proxyless_rs.distributed: broadcasting the sampled architecture failed on rank 0' in message
    assert elapsed < distributed_workers.TIMEOUT.total_seconds() + 60
