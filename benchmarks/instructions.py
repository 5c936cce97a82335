"""Instructions per training step of the overhead-bound case (20 x 7 Linear(64), batch 8), NNI 2.10's
layers against proxyless_rs's, counted by valgrind's callgrind: a count that does not depend on the
host's speed or load, where wall-clock ratios do (docs/benchmarks.md).

Each implementation runs twice under callgrind, with 0 and with ``--steps`` training steps after the
same warm-up; the difference divided by the steps is the count per step (the set-up, imports
included, is the same in both runs and cancels).

    python benchmarks/instructions.py [--steps 10]      # about 10-20 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(impl: str, steps: int) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from run import implementations, training_step
    from supernets import MixedChain

    torch.set_num_threads(1)
    layer_cls, input_cls = implementations()[impl]
    torch.manual_seed(0)
    net = MixedChain(layer_cls, input_cls, depth=20, n=7, dim=64)
    x = torch.randn(8, 64)
    for seed in range(3):  # warm-up: allocator, caches, lazy initialisation
        torch.manual_seed(seed)
        training_step(net, x)
    for seed in range(steps):
        torch.manual_seed(100 + seed)
        training_step(net, x)


def count(impl: str, steps: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'callgrind.out'
        cmd = ['valgrind', '--tool=callgrind', f'--callgrind-out-file={out}', sys.executable, __file__,
               '--child', impl, '--steps', str(steps)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f'{" ".join(cmd)} failed:\n{result.stderr[-3000:]}')
        match = re.search(r'^(?:summary|totals): (\d+)', out.read_text(errors='replace'), re.M)
        if match is None:
            raise SystemExit(f'no instruction total in {out}')
        return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--child', choices=['nni', 'proxyless_rs'])
    parser.add_argument('--only', choices=['nni', 'proxyless_rs'], help='count one implementation only (e.g. '
                        'another build of proxyless_rs, through PYTHONPATH)')
    parser.add_argument('--out', type=Path, help='write the figures as JSON here too')
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps)
        return 0
    per_step = {}
    for impl in [args.only] if args.only else ['nni', 'proxyless_rs']:
        base, total = count(impl, 0), count(impl, args.steps)
        per_step[impl] = (total - base) / args.steps
        print(f'{impl:>13}: {per_step[impl] / 1e6:.1f} M instructions per step', flush=True)
    ratio = per_step['nni'] / per_step['proxyless_rs'] if len(per_step) == 2 else None
    if ratio is not None:
        print(f'NNI / proxyless_rs: {ratio:.2f}x fewer instructions per step')
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({'steps': args.steps, 'per_step': per_step, 'ratio': ratio}, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
