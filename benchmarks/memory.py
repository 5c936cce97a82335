"""Peak memory of a search step on the paper's search space, NNI's implementations beside ours.

The supernet is benchmarks/supernets.py's ConvSupernet: residual blocks whose body is a mixed
layer of MobileNetV2 inverted bottlenecks (kernel 3/5/7 x expansion 3/6) plus identity and zero,
as ProxylessNAS searches them. One search step is an architecture step (a draw, forward and
backward on a batch, the architecture optimizer's step) and a weight step (a draw, forward and
backward, the weights' optimizer step), as the one-shot strategies run it:

- ``nni``: the installed NNI's ``ProxylessMixedLayer`` (NNI 2.10's or NNI 3.0's), its
  architecture step back-propagating into the weights as NNI's strategy does;
- ``darts``: the installed NNI's ``DifferentiableMixedLayer`` (every path in every step: the
  memory the paper compares against);
- ``ours`` / ``ours-two``: proxyless_rs's layers in full / two-path mode, the architecture step
  under ``no_weight_grad`` and the weight step under ``no_arch_grad``, as proxyless_rs's strategy.

Each configuration runs in a process of its own with large allocations going to mmap
(``MALLOC_MMAP_THRESHOLD_``), so that freed tensors leave the resident set; after one step to
allocate the optimizers' state, the kernel's peak resident set (``VmHWM``) is reset, and the
figure is the peak over the next steps less the resident set before them: what the steps
themselves hold at their peak (activations, saved tensors, gradients), not the model or torch.

    python benchmarks/memory.py [--depth 2 --depth 4 --depth 6] [--batch 32] [--out results/memory.json]
    python benchmarks/memory.py --table results/memory.json      # the Markdown table of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMPLEMENTATIONS = ('nni', 'darts', 'ours', 'ours-two')


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _peak_bytes() -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('no VmHWM in /proc/self/status')


def _reset_peak() -> None:
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM to the current resident set (Linux 4.0 and later)


def measure(impl: str, depth: int, batch: int, channels: int, size: int, steps: int) -> dict:
    """One configuration, in this process: the steps' peak memory (bytes) and seconds per step."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    import proxyless_rs
    from proxyless_rs.nni.version import NNI3
    from supernets import ConvSupernet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if NNI3:
        import nni.mutable.frozen
        from nni.nas.oneshot.pytorch.supermodule import differentiable, proxyless

        nni.mutable.frozen._ENSURE_FROZEN_STRICT = False  # supermodules outside a ModelSpace
    else:
        from nni.retiarii.oneshot.pytorch.supermodule import differentiable, proxyless

    def as_dict(cls):  # NNI 3.0's layers take their candidates as a dict
        return (lambda paths, *args: cls(dict(paths), *args)) if NNI3 else cls

    layer_cls = {
        'nni': as_dict(proxyless.ProxylessMixedLayer),
        'darts': as_dict(differentiable.DifferentiableMixedLayer),
        'ours': proxyless_rs.ProxylessMixedLayer,
        'ours-two': lambda *args: proxyless_rs.ProxylessMixedLayer(*args, mode='two'),
    }[impl]
    net = ConvSupernet(layer_cls, None, depth=depth, channels=channels)
    mixed = net.mixed()
    alphas = [m._arch_alpha for m in mixed]
    alpha_ids = {id(a) for a in alphas}
    weights = torch.optim.SGD([p for p in net.parameters() if id(p) not in alpha_ids], lr=0.01, momentum=0.9)
    arch = torch.optim.Adam(alphas, lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    ours = impl.startswith('ours')

    def resample():
        memo: dict = {}
        for m in mixed:
            memo.update(m.resample(memo))

    def step():
        resample()
        arch.zero_grad()
        if ours:
            with proxyless_rs.no_weight_grad(net):
                F.cross_entropy(net(x), y).backward()
        else:
            F.cross_entropy(net(x), y).backward()
        arch.step()
        if ours:
            proxyless_rs.rescale_two_path(*mixed)
        resample()
        weights.zero_grad()
        if ours:
            with proxyless_rs.no_arch_grad(*mixed):
                F.cross_entropy(net(x), y).backward()
        else:
            F.cross_entropy(net(x), y).backward()
        weights.step()

    step()  # the optimizers' state, torch's first-call allocations
    baseline = _rss_bytes()
    _reset_peak()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return {'impl': impl, 'depth': depth, 'batch': batch, 'peak_bytes': _peak_bytes() - baseline,
            'seconds_per_step': seconds, 'nni': 'NNI 3.0' if NNI3 else 'NNI 2.10', 'torch': torch.__version__}


def table(results: list[dict]) -> str:
    """The results as docs/benchmarks.md's Markdown table: peak MiB per implementation and depth,
    and each one's ratio to the installed NNI's ProxylessNAS layer."""
    names = {'nni': 'ProxylessMixedLayer', 'darts': 'DARTS (every path)', 'ours': 'proxyless_rs, full',
             'ours-two': 'proxyless_rs, two-path'}
    depths = sorted({r['depth'] for r in results})
    rows = ['| NNI | layers | ' + ' | '.join(f'depth {d}' for d in depths) + ' |',
            '| --- | --- | ' + ' | '.join('---' for _ in depths) + ' |']
    for nni in sorted({r['nni'] for r in results}):
        by = {(r['impl'], r['depth']): r for r in results if r['nni'] == nni}
        for impl in IMPLEMENTATIONS:
            cells = []
            for d in depths:
                r, base = by.get((impl, d)), by.get(('nni', d))
                if r is None:
                    cells.append('-')
                    continue
                mib = r['peak_bytes'] / 2**20
                cells.append(f'{mib:.0f} MiB' + (f' ({r["peak_bytes"] / base["peak_bytes"]:.2f}x)'
                                                 if base is not None and impl != 'nni' else ''))
            who = f'NNI\'s {names[impl]}' if impl in ('nni', 'darts') else names[impl]
            rows.append(f'| {nni} | {who} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--depth', type=int, action='append')
    parser.add_argument('--impl', action='append', choices=IMPLEMENTATIONS)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--channels', type=int, default=16)
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--out', default=None, help='append the results to this JSON file')
    parser.add_argument('--one', action='store_true', help=argparse.SUPPRESS)  # a child process's run
    parser.add_argument('--table', default=None, help='print the Markdown table of a results file and stop')
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    depths, impls = args.depth or [2, 4, 6], args.impl or list(IMPLEMENTATIONS)
    if args.one:
        print(json.dumps(measure(impls[0], depths[0], args.batch, args.channels, args.size, args.steps)))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', OMP_NUM_THREADS='1')
    results = []
    for depth in depths:
        for impl in impls:
            out = subprocess.run([sys.executable, __file__, '--one', '--impl', impl, '--depth', str(depth),
                                  '--batch', str(args.batch), '--channels', str(args.channels),
                                  '--size', str(args.size), '--steps', str(args.steps)],
                                 env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"{result['nni']:<9} depth {depth}  {impl:<9} peak {result['peak_bytes'] / 2**20:8.1f} MiB  "
                  f"{result['seconds_per_step'] * 1e3:8.0f} ms/step", flush=True)
    if args.out:
        path = Path(args.out)
        previous = json.loads(path.read_text()) if path.exists() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(previous + results, indent=1) + '\n')


if __name__ == '__main__':
    main()
