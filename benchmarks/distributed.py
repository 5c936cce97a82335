"""Data-parallel search: the search's own collectives and the time of a search step against the
number of mixed layers, with draw rounds (``search.draws()``: one collective for every draw of a
round) and with each draw broadcast on its own, gloo on CPU processes of this machine.

Each configuration is a plain-PyTorch search step under DDP (an architecture step on a validation
shard, a weight step on a training shard; tests/distributed_workers.py's ``count_collectives``, the
worker tests/test_distributed.py asserts the counts with) on a chain of ``L`` mixed layers of two
``Linear(8)`` candidates; collectives are those on the search's own process group (the draws and
the averaged alpha gradients; DDP's own bucket all-reduces are left out: they are the data-parallel
training's, whatever the search does). Time: the median step of rank 0, one thread per process.

    python benchmarks/distributed.py [--world 2 --world 4] [--layers 4 --layers 16 --layers 64] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tests'))

import distributed_workers  # noqa: E402
from test_distributed import launch  # noqa: E402


def measure(world: int, layers: tuple[int, ...], steps: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        codes, _ = launch(distributed_workers.count_collectives, Path(out), world=world, layers=layers, steps=steps)
        if codes != [0] * world:
            raise SystemExit(f'a rank failed (exit codes {codes}):\n' + '\n'.join(
                p.read_text() for p in sorted(Path(out).glob('rank*.err'))))
        return torch.load(Path(out) / 'rank0.pt', weights_only=False)


def table(results: list[dict]) -> str:
    rows = ['| processes | mixed layers | collectives per search step: rounds | each draw on its own '
            '| ms per search step: rounds | each draw on its own |', '|---|---|---|---|---|---|']
    by = {(r['world'], r['layers'], r['rounds']): r for r in results}
    for world, layers in sorted({(r['world'], r['layers']) for r in results}):
        counts = [statistics.median(by[world, layers, rounds]['collectives']) for rounds in (True, False)]
        times = [statistics.median(by[world, layers, rounds]['seconds']) * 1e3 for rounds in (True, False)]
        rows.append(f'| {world} | {layers} | {counts[0]:.0f} | {counts[1]:.0f} | {times[0]:.1f} | {times[1]:.1f} |')
    return '\n'.join(rows) + '\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--world', type=int, action='append', help='processes (repeatable; default 2 and 4)')
    parser.add_argument('--layers', type=int, action='append', help='mixed layers (repeatable; default 4, 16, 64)')
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--out', help='write the results as JSON here')
    args = parser.parse_args()
    results = []
    for world in args.world or [2, 4]:
        results += measure(world, tuple(args.layers or [4, 16, 64]), args.steps)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({'torch': torch.__version__, 'results': results}, indent=1))
    print(f'torch {torch.__version__}, gloo, {args.steps} search steps per configuration')
    print(table(results))


if __name__ == '__main__':
    multiprocessing.freeze_support()
    main()
