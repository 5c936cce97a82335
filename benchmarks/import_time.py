"""Import costs: ``import proxyless_rs`` and its parts against ``import torch`` and NNI's own modules.

    python benchmarks/import_time.py [--repeats 7]

Each statement runs in a fresh interpreter (``python -c``), ``--repeats`` times, interleaved;
reported: the median wall time, and that time minus the median of ``import torch`` alone.
Python's own start-up is the ``pass`` row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

STATEMENTS = [
    ('Python start-up', 'pass'),
    ('torch', 'import torch'),
    ('proxyless_rs', 'import proxyless_rs'),
    ("proxyless_rs's layers", 'from proxyless_rs import ProxylessMixedLayer'),
    ("NNI 2.10's layers", 'from nni.nas.oneshot.pytorch.supermodule.proxyless import ProxylessMixedLayer'),
    ("proxyless_rs's strategy", 'import proxyless_rs; proxyless_rs.strategy.Proxyless'),
    ("NNI 2.10's strategy", 'from nni.retiarii.strategy import Proxyless'),
]


def wall_time(statement: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, '-W', 'ignore', '-c', statement], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    for _, statement in STATEMENTS:  # warm the file cache
        wall_time(statement)
    times: dict[str, list[float]] = {statement: [] for _, statement in STATEMENTS}
    for _ in range(args.repeats):
        for _, statement in STATEMENTS:
            times[statement].append(wall_time(statement))
    medians = {statement: statistics.median(values) for statement, values in times.items()}
    torch_alone = medians['import torch']
    print(f'{os.cpu_count()} cores, Python {sys.version.split()[0]}; median of {args.repeats} fresh interpreters\n')
    print('| what | statement | seconds | beyond `import torch` |')
    print('| --- | --- | --- | --- |')
    for name, statement in STATEMENTS:
        beyond = '' if statement in ('pass', 'import torch') else f'{medians[statement] - torch_alone:+.2f}'
        print(f'| {name} | `{statement}` | {medians[statement]:.2f} | {beyond} |')


if __name__ == '__main__':
    main()
