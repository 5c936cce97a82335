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
A second process per configuration, with the default allocator (an mmap per large tensor costs
page faults that would swamp the arithmetic), times a search step: the median of ``--steps``
steps, one thread.

With ``--device cuda`` the supernet and the batch are on the GPU, and one process per
configuration measures both: the peak of ``torch.cuda.max_memory_allocated`` over the steps less
what was allocated before them (the caching allocator's own count, so no allocator trick is
needed), then the median time of ``--steps`` steps, each ended by ``torch.cuda.synchronize``.

How the cost grows: at depths ``--depth`` with all 8 candidates, and at depth ``--growth-depth``
with the first ``--candidates`` of them (the bottlenecks by kernel size, then identity and zero).

    python benchmarks/memory.py [--depth 2 --depth 4 --depth 6] [--candidates 2 --candidates 4 ...]
                                [--batch 32] [--out results/memory.json]
    python benchmarks/memory.py --device cuda --out results/memory-cuda.json   # on a GPU
    python benchmarks/memory.py --table results/memory.json   # docs/benchmarks.md's tables
    python benchmarks/memory.py --plot results/memory.json docs/memory.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def measure(impl: str, depth: int, candidates: int, batch: int, channels: int, size: int, steps: int,
            device: str = 'cpu', memory_steps: int = 0) -> dict:
    """One configuration, in this process: the steps' peak memory (bytes) and seconds per step.

    On the CPU the peak is the resident set's over the ``steps`` (the caller runs the timing in
    another process); on CUDA the allocator's peak over ``memory_steps`` steps, then ``steps``
    timed steps in the same process."""
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
    net = ConvSupernet(layer_cls, None, depth=depth, channels=channels, candidates=candidates).to(device)
    mixed = net.mixed()
    alphas = [m._arch_alpha for m in mixed]
    alpha_ids = {id(a) for a in alphas}
    weights = torch.optim.SGD([p for p in net.parameters() if id(p) not in alpha_ids], lr=0.01, momentum=0.9)
    arch = torch.optim.Adam(alphas, lr=1e-3)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    cuda = torch.device(device).type == 'cuda'
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
    if cuda:
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(memory_steps):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - baseline
    else:
        baseline = _rss_bytes()
        _reset_peak()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    if not cuda:
        peak = _peak_bytes() - baseline
    return {'impl': impl, 'depth': depth, 'candidates': candidates, 'batch': batch,
            'peak_bytes': peak, 'seconds_per_step': statistics.median(times),
            'nni': 'NNI 3.0' if NNI3 else 'NNI 2.10', 'torch': torch.__version__,
            'device': torch.cuda.get_device_name(device) if cuda else 'cpu'}


NAMES = {'nni': "NNI's ProxylessMixedLayer", 'darts': "NNI's DARTS (every path)", 'ours': 'proxyless_rs, full',
         'ours-two': 'proxyless_rs, two-path'}


def _grid(results: list[dict], axis: str, fixed: dict, cell) -> list[str]:
    """Rows of NNI version x implementation, a column per value of ``axis`` (the other axis held at
    ``fixed``); ``cell(result, NNI's ProxylessNAS result)`` gives each cell's text."""
    chosen = [r for r in results if all(r.get(k, 8) == v for k, v in fixed.items())]
    values = sorted({r.get(axis, 8) for r in chosen})
    label = {'depth': 'depth', 'candidates': 'n ='}[axis]
    rows = ['| NNI | layers | ' + ' | '.join(f'{label} {v}' for v in values) + ' |',
            '| --- | --- | ' + ' | '.join('---' for _ in values) + ' |']
    for nni in sorted({r['nni'] for r in chosen}):
        by = {(r['impl'], r.get(axis, 8)): r for r in chosen if r['nni'] == nni}
        for impl in IMPLEMENTATIONS:
            if sum((impl, v) in by for v in values) < min(2, len(values)):
                continue  # a single point is no line (the growth runs leave DARTS out)
            cells = [cell(by[impl, v], by.get(('nni', v)), impl) if (impl, v) in by else '-' for v in values]
            rows.append(f'| {nni} | {NAMES[impl]} | ' + ' | '.join(cells) + ' |')
    return rows


def _ratio(r: dict, base: dict | None, impl: str, key: str) -> str:
    # No ratio to a baseline that measured nothing (tiny smoke shapes can peak below a byte's worth of
    # new allocations).
    if base is None or impl == 'nni' or not base[key] > 0:
        return ''
    return f' ({r[key] / base[key]:.2f}x)'


def _memory_cell(r: dict, base: dict | None, impl: str) -> str:
    return f'{r["peak_bytes"] / 2**20:.0f} MiB{_ratio(r, base, impl, "peak_bytes")}'


def _time_cell(r: dict, base: dict | None, impl: str) -> str:
    return f'{r["seconds_per_step"] * 1e3:.0f} ms{_ratio(r, base, impl, "seconds_per_step")}'


def _growth_depth(results: list[dict]) -> int | None:
    """The depth the candidate-count runs ran at (None without them)."""
    growth = [r for r in results if r.get('candidates', 8) != 8]
    return growth[0]['depth'] if growth else None


def table(results: list[dict]) -> str:
    """docs/benchmarks.md's tables: peak memory and time per search step, by depth (all 8
    candidates) and by candidate count (at the growth depth), each with its ratio to the installed
    NNI's ProxylessNAS layer."""
    growth_depth = _growth_depth(results)
    parts = [('Peak memory of a search step, by depth (n = 8; in brackets, the ratio to NNI\'s ProxylessMixedLayer)',
              'depth', {'candidates': 8}, _memory_cell),
             ('Time per search step, by depth (n = 8; the same ratio)', 'depth', {'candidates': 8}, _time_cell)]
    if growth_depth is not None:
        parts += [(f'Peak memory, by candidate count (depth {growth_depth})', 'candidates', {'depth': growth_depth},
                   _memory_cell),
                  (f'Time per search step, by candidate count (depth {growth_depth})', 'candidates',
                   {'depth': growth_depth}, _time_cell)]
    out = []
    for title, axis, fixed, cell in parts:
        out += [f'**{title}**', '', *_grid(results, axis, fixed, cell), '']
    return '\n'.join(out).rstrip() + '\n'


def plot(results: list[dict], path: Path) -> None:
    """How the cost grows: time per step and peak memory against depth and against candidate count,
    a line per NNI version and implementation."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    growth_depth = _growth_depth(results)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex='col')
    styles = {'NNI 2.10': '-', 'NNI 3.0': '--'}
    colours = {'nni': 'tab:blue', 'darts': 'tab:red', 'ours': 'tab:green', 'ours-two': 'tab:olive'}
    for col, (axis, fixed) in enumerate([('depth', {'candidates': 8}), ('candidates', {'depth': growth_depth})]):
        chosen = [r for r in results if all(r.get(k, 8) == v for k, v in fixed.items())]
        for nni in sorted({r['nni'] for r in chosen}):
            for impl in IMPLEMENTATIONS:
                points = sorted(((r.get(axis, 8), r) for r in chosen if r['nni'] == nni and r['impl'] == impl),
                                key=lambda point: point[0])
                if len(points) < 2:
                    continue
                xs = [x for x, _ in points]
                for row, (key, scale) in enumerate([('seconds_per_step', 1e3), ('peak_bytes', 2**-20)]):
                    axes[row][col].plot(xs, [r[key] * scale for _, r in points], styles[nni], marker='o',
                                        color=colours[impl], label=f'{nni}: {NAMES[impl]}')
        axes[1][col].set_xlabel('depth (8 candidates)' if axis == 'depth' else f'candidates (depth {growth_depth})')
    for col in range(2):
        axes[0][col].set_ylabel('ms per search step')
        axes[1][col].set_ylabel('peak MiB of a search step')
        for row in range(2):
            axes[row][col].set_yscale('log')
            axes[row][col].grid(True, which='both', alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=4, fontsize=8)
    where = {r.get('device', 'cpu') for r in results}
    on = 'one CPU thread' if where == {'cpu'} else ', '.join(sorted(where))
    fig.suptitle(f'A search step on the paper\'s search space (batch 32, 16 channels, 32x32, {on})')
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--depth', type=int, action='append')
    parser.add_argument('--candidates', type=int, action='append',
                        help='candidate counts to run at --growth-depth (default: none)')
    parser.add_argument('--growth-depth', type=int, default=4)
    parser.add_argument('--growth-impl', action='append', choices=IMPLEMENTATIONS,
                        help='the implementations run by candidate count (default: all but darts)')
    parser.add_argument('--impl', action='append', choices=IMPLEMENTATIONS)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--channels', type=int, default=16)
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--steps', type=int, default=5, help='timed steps per configuration')
    parser.add_argument('--memory-steps', type=int, default=2, help='steps over which the peak is taken')
    parser.add_argument('--device', default='cpu', help="'cpu' (default) or 'cuda'")
    parser.add_argument('--out', default=None, help='append the results to this JSON file')
    parser.add_argument('--one', action='store_true', help=argparse.SUPPRESS)  # a child process's run
    parser.add_argument('--table', default=None, help='print the Markdown tables of a results file and stop')
    parser.add_argument('--plot', nargs=2, metavar=('RESULTS', 'PNG'), help='plot a results file and stop')
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    if args.plot:
        plot(json.loads(Path(args.plot[0]).read_text()), Path(args.plot[1]))
        return
    depths, impls = args.depth or [2, 4, 6], args.impl or list(IMPLEMENTATIONS)
    if args.one:
        print(json.dumps(measure(impls[0], depths[0], (args.candidates or [8])[0], args.batch, args.channels,
                                 args.size, args.steps, args.device, args.memory_steps)))
        return
    growth_impls = args.growth_impl or [i for i in impls if i != 'darts']
    configs = [(d, 8, impl) for d in depths for impl in impls] + [
        (args.growth_depth, n, impl) for n in args.candidates or [] if n != 8 for impl in growth_impls]
    memory_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', OMP_NUM_THREADS='1')
    time_env = dict(os.environ, OMP_NUM_THREADS='1')
    results = []

    def one(impl: str, depth: int, candidates: int, steps: int, env: dict) -> dict:
        out = subprocess.run([sys.executable, __file__, '--one', '--impl', impl, '--depth', str(depth),
                              '--candidates', str(candidates), '--batch', str(args.batch),
                              '--channels', str(args.channels), '--size', str(args.size), '--steps', str(steps),
                              '--device', args.device, '--memory-steps', str(args.memory_steps)],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:  # the child's traceback, not only its exit status
            sys.exit(f'memory.py: {impl} at depth {depth}, n={candidates} failed:\n{out.stderr}')
        return json.loads(out.stdout.strip().splitlines()[-1])

    for depth, candidates, impl in configs:
        if args.device == 'cpu':
            result = one(impl, depth, candidates, args.memory_steps, memory_env)
            result['seconds_per_step'] = one(impl, depth, candidates, args.steps, time_env)['seconds_per_step']
        else:  # the CUDA allocator counts its own peak: one process measures both
            result = one(impl, depth, candidates, args.steps, time_env)
        results.append(result)
        print(f"{result['nni']:<9} depth {depth}  n={candidates}  {impl:<9} peak "
              f"{result['peak_bytes'] / 2**20:8.1f} MiB  {result['seconds_per_step'] * 1e3:8.0f} ms/step",
              flush=True)
    if args.out:
        path = Path(args.out)
        previous = json.loads(path.read_text()) if path.exists() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(previous + results, indent=1) + '\n')


if __name__ == '__main__':
    main()
