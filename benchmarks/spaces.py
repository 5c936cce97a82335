"""Peak memory and time of a search step on NNI's own hub spaces: MobileNetV3Space and AutoformerSpace
at their default widths (value choices), and the ProxylessNAS paper's comparison, the DARTS space at
CIFAR-10 size (``DARTS(width=16, num_cells=8)``: cells), on 32x32 images (random data, 10 classes).

Each method's supernet is built by its own strategy's mutation hooks from a fresh space, and one
search step is what that strategy runs:

- ``ours`` / ``ours-two``: proxyless_rs's strategy (full / two-path mode): an architecture step (a draw
  of every label, forward, backward under ``no_weight_grad``, the architecture optimizer) and a
  weight step (a draw, forward, backward under ``no_arch_grad``, the weights' optimizer);
- ``darts``: NNI's DARTS (its ``MixedOpDifferentiablePolicy``: every value's slice weighted by its
  probability, every path of every layer choice): an architecture step and a weight step;
- ``random``: NNI's RandomOneShot (path sampling: a uniform draw, one path, no architecture step): a
  weight step.

Each configuration runs in a process of its own, twice. Memory: at the widest architecture (every
width, expansion, kernel size and depth at its largest value, every cell slot's op the heaviest of
its candidates (``sep_conv_5x5`` of DARTS's): the most a single-path step can hold; DARTS computes
every path anyway), the peak over ``--memory-steps`` steps of the bytes held
by the tensors the steps create (activations, saved tensors, gradients,
alternatives evaluated in backward), counted where torch dispatches their ops
(``proxyless_rs.hardware.counting``'s tracker: the Rust core's ops too; kernels' own workspaces such as
oneDNN's scratchpads are not tensors and are not seen, nor are the model and the optimizers' state,
which exist before the steps). Time: the median of ``--steps`` steps on one thread, in a process of
its own (the tracker costs time).

    python benchmarks/spaces.py [--space mobilenetv3 --space autoformer --space darts] [--batch N]
                                [--out results/spaces.json]
    python benchmarks/spaces.py --table results/spaces.json
    python benchmarks/spaces.py --plot results/spaces.json darts.png --space darts
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ('ours', 'ours-two', 'darts', 'random')
NAMES = {'ours': 'proxyless_rs (ProxylessNAS), full', 'ours-two': 'proxyless_rs, two-path',
         'darts': "NNI's DARTS", 'random': "NNI's RandomOneShot (weights only)"}
SPACES = ('mobilenetv3', 'autoformer', 'darts')
# A cell slot's candidates, heaviest first (weights and activations held by a step): NNI's NDS ops.
HEAVIEST_OPS = ('sep_conv_7x7', 'sep_conv_5x5', 'dil_conv_5x5', 'sep_conv_3x3', 'dil_conv_3x3', 'conv_7x1_1x7',
                'conv_3x3', 'conv_1x1')


def build_space(name: str):
    from proxyless_rs.nni.version import NNI3

    if NNI3:
        import nni.nas.hub.pytorch as hub
    else:
        import nni.retiarii.hub.pytorch as hub
    if name == 'mobilenetv3':
        return hub.MobileNetV3Space(num_labels=10), []
    if name == 'darts':  # the ProxylessNAS paper's comparison: DARTS's CIFAR-10 search space
        return hub.DARTS(width=16, num_cells=8, dataset='cifar'), []
    # 32x32 images in patches of 4: 64 tokens and the class token.
    labels = {'num_labels' if NNI3 else 'num_classes': 10}
    space = hub.AutoformerSpace(img_size=32, patch_size=4, **labels)
    if NNI3:
        return space, []
    from nni.retiarii.hub.pytorch.autoformer import MixedAbsPosEmbed, MixedClsToken

    return space, [MixedAbsPosEmbed.mutate, MixedClsToken.mutate]


def build_supernet(method: str, name: str):
    """``(supernet, searched modules)`` as ``method``'s strategy builds them."""
    import torch.nn as nn

    from proxyless_rs.nni.version import NNI3

    space, hooks = build_space(name)
    if NNI3:
        import nni.nas.strategy as strategies

        import proxyless_rs

        strategy = {'ours': lambda: proxyless_rs.strategy.Proxyless(mutation_hooks=hooks),
                    'ours-two': lambda: proxyless_rs.strategy.Proxyless(mutation_hooks=hooks, mode='two'),
                    'darts': lambda: strategies.DARTS(mutation_hooks=hooks),
                    'random': lambda: strategies.RandomOneShot(mutation_hooks=hooks)}[method]()
        model = strategy.mutate_model(space)
        from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

        return model, [m for m in model.modules() if isinstance(m, BaseSuperNetModule)]
    from nni.nas.oneshot.pytorch.base_lightning import traverse_and_mutate_submodules
    from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
    from nni.nas.oneshot.pytorch.sampling import RandomSamplingLightningModule
    from nni.nas.oneshot.pytorch.supermodule.differentiable import MixedOpDifferentiablePolicy
    from nni.nas.oneshot.pytorch.supermodule.sampling import MixedOpPathSamplingPolicy

    from proxyless_rs.nni.v2.lightning import ProxylessLightningModule
    from proxyless_rs.nni.v2.mixed import MixedOpProxylessPolicy

    if method.startswith('ours'):
        module_cls, kwargs = ProxylessLightningModule, {'mixed_op_sampling': MixedOpProxylessPolicy,
                                                         'proxyless_mode': 'two' if method == 'ours-two' else 'full'}
    elif method == 'darts':
        module_cls, kwargs = DartsLightningModule, {'mixed_op_sampling': MixedOpDifferentiablePolicy}
    else:
        module_cls, kwargs = RandomSamplingLightningModule, {'mixed_op_sampling': MixedOpPathSamplingPolicy}
    kwargs['softmax'] = nn.Softmax(-1)
    searched = traverse_and_mutate_submodules(space, hooks + module_cls.default_mutation_hooks(None), kwargs)
    return space, searched


def _largest(values: list) -> object:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values):
        return max(numbers)
    return next((op for op in HEAVIEST_OPS if op in values), values[0])


def widest(model, searched) -> dict:
    """The architecture of the memory runs: every value choice and depth at its largest value (a depth
    chain's blocks all taken), every layer choice at its first candidate; the most a step can hold."""
    from proxyless_rs._choices import choices
    from proxyless_rs._mixed import ValueChoiceSite
    from proxyless_rs._site import ChoiceSite
    from proxyless_rs.nni.version import NNI3

    memo: dict = {}
    for choice in choices(model):  # proxyless_rs's supernet
        names = list(choice.names) if hasattr(choice, 'names') else list(range(choice.n_candidates))
        if isinstance(choice, ValueChoiceSite):
            memo[choice.label] = _largest(names)
        elif isinstance(choice, ChoiceSite):  # a cell's op (the heaviest) or input (the latest state)
            memo[choice.label] = choice.exported(names.index(_largest(names)))
        else:
            memo[choice.label] = '1' if names == ['0', '1'] else names[0]
    if memo:
        return memo
    if NNI3:  # NNI's own supernets: the space's labels (a cell's input as a list, as NNI 3.0's cells take it)
        memo = {label: _largest(list(m.values)) for label, m in model.simplify().items()}
        return {label: [v] if '/input_' in label else v for label, v in memo.items()}
    for module in searched:
        for label, spec in module.search_space_spec().items():
            memo[label] = _largest(list(spec.values))
    return memo


def measure(method: str, name: str, batch: int, size: int, steps: int, memory: bool) -> dict:
    """One configuration, in this process: the steps' peak tensor memory (bytes), or seconds per step."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    import proxyless_rs
    from proxyless_rs.hardware.counting import _PeakMemory
    from proxyless_rs.nni.version import NNI_NAME

    warnings.filterwarnings('ignore')
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, searched = build_supernet(method, name)
    alphas = list({id(p): p for n, p in model.named_parameters() if '_arch_alpha' in n}.values())
    alpha_ids = {id(p) for p in alphas}
    weights = torch.optim.SGD([p for p in model.parameters() if id(p) not in alpha_ids], lr=0.01, momentum=0.9)
    arch = torch.optim.Adam(alphas, lr=1e-3) if alphas else None
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    ours = method.startswith('ours')

    fixed = widest(model, searched) if memory else {}

    def resample():
        memo: dict = dict(fixed)
        for m in searched:
            memo.update(m.resample(memo))

    def step():
        if method != 'random':
            resample()
            arch.zero_grad()
            if ours:
                with proxyless_rs.no_weight_grad(model):
                    F.cross_entropy(model(x), y).backward()
            else:
                F.cross_entropy(model(x), y).backward()
            arch.step()
            if ours:
                proxyless_rs.rescale_two_path(model)
        resample()
        weights.zero_grad()
        if ours:
            with proxyless_rs.no_arch_grad(model):
                F.cross_entropy(model(x), y).backward()
        else:
            F.cross_entropy(model(x), y).backward()
        weights.step()

    step()  # the optimizers' state, torch's first-call allocations
    if memory:
        # The tensors the steps create, counted where torch dispatches their ops (the core's too).
        tracker = _PeakMemory([])
        with tracker:
            for _ in range(steps):
                step()
        return {'method': method, 'space': name, 'peak_bytes': tracker.peak}
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {'method': method, 'space': name, 'batch': batch, 'size': size,
            'seconds_per_step': statistics.median(times), 'nni': NNI_NAME, 'torch': torch.__version__}


def table(results: list[dict], only: list[str] | None = None) -> str:
    """docs/benchmarks.md's table: a row per NNI version and method, peak memory and time per search
    step on each space (``only`` these), with the ratio to proxyless_rs's full mode."""
    spaces = [s for s in only or SPACES if any(r['space'] == s for r in results)]
    rows = ['| NNI | method | ' + ' | '.join(f'{s}: peak memory | {s}: time per step' for s in spaces) + ' |',
            '| --- | --- | ' + ' | '.join('---: | ---:' for _ in spaces) + ' |']
    for nni in sorted({r['nni'] for r in results}):
        by = {(r['method'], r['space']): r for r in results if r['nni'] == nni}
        for method in METHODS:
            cells = []
            for s in spaces:
                r, base = by.get((method, s)), by.get(('ours', s))
                if r is None:
                    cells += ['-', '-']
                    continue
                memory = f'{r["peak_bytes"] / 2**20:.0f} MiB'
                seconds = f'{r["seconds_per_step"] * 1e3:.0f} ms'
                if base is not None and method != 'ours' and base['peak_bytes'] > 0:
                    memory += f' ({r["peak_bytes"] / base["peak_bytes"]:.2f}x)'
                if base is not None and method != 'ours' and base['seconds_per_step'] > 0:
                    seconds += f' ({r["seconds_per_step"] / base["seconds_per_step"]:.2f}x)'
                cells += [memory, seconds]
            rows.append(f'| {nni} | {NAMES[method]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(rows) + '\n'


def plot(results: list[dict], path: Path, spaces: list[str]) -> None:
    """Peak memory and time per search step of each method on ``spaces``, bars grouped by NNI version."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    colours = {'ours': 'tab:green', 'ours-two': 'tab:olive', 'darts': 'tab:red', 'random': 'tab:gray'}
    nnis = sorted({r['nni'] for r in results})
    fig, axes = plt.subplots(len(spaces), 2, figsize=(11, 3.6 * len(spaces)), squeeze=False)
    for row, space in enumerate(spaces):
        by = {(r['nni'], r['method']): r for r in results if r['space'] == space}
        batch = next((r['batch'] for r in by.values()), None)
        for col, (key, scale, unit) in enumerate([('peak_bytes', 2**-20, 'peak memory, MiB'),
                                                   ('seconds_per_step', 1e3, 'time, ms')]):
            axis = axes[row][col]
            width = 0.8 / len(METHODS)
            for i, method in enumerate(METHODS):
                xs = [n + (i - (len(METHODS) - 1) / 2) * width for n in range(len(nnis))]
                ys = [by[(nni, method)][key] * scale if (nni, method) in by else 0 for nni in nnis]
                bars = axis.bar(xs, ys, width, color=colours[method], label=NAMES[method])
                axis.bar_label(bars, fmt='%.0f', fontsize=7)
            axis.set_xticks(range(len(nnis)), nnis)
            axis.set_ylabel(unit)
            axis.set_title(f'{space}, batch {batch}: one search step, {unit}', fontsize=9)
            axis.grid(True, axis='y', alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=len(METHODS), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--space', action='append', choices=SPACES)
    parser.add_argument('--method', action='append', choices=METHODS)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--steps', type=int, default=3, help='timed steps per configuration')
    parser.add_argument('--memory-steps', type=int, default=2, help='steps over which the peak is taken')
    parser.add_argument('--out', default=None, help='append the results to this JSON file')
    parser.add_argument('--one', action='store_true', help=argparse.SUPPRESS)  # a child process's run
    parser.add_argument('--memory', action='store_true', help=argparse.SUPPRESS)  # ... of memory
    parser.add_argument('--table', default=None, help='print the Markdown table of a results file and stop')
    parser.add_argument('--plot', nargs=2, metavar=('RESULTS', 'PNG'), help='plot a results file (--space) and stop')
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text()), args.space))
        return
    if args.plot:
        plot(json.loads(Path(args.plot[0]).read_text()), Path(args.plot[1]), args.space or list(SPACES))
        return
    spaces, methods = args.space or list(SPACES), args.method or list(METHODS)
    if args.one:
        print(json.dumps(measure(methods[0], spaces[0], args.batch, args.size, args.steps, args.memory)))
        return
    env = dict(os.environ, OMP_NUM_THREADS='1')

    def one(method: str, space: str, steps: int, memory: bool) -> dict:
        out = subprocess.run([sys.executable, __file__, '--one', '--method', method, '--space', space,
                              '--batch', str(args.batch), '--size', str(args.size), '--steps', str(steps),
                              *(['--memory'] if memory else [])],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f'{method} on {space} failed:\n{out.stdout}\n{out.stderr}')
        return json.loads(out.stdout.strip().splitlines()[-1])

    results = []
    for space in spaces:
        for method in methods:
            result = one(method, space, args.steps, memory=False)
            result['peak_bytes'] = one(method, space, args.memory_steps, memory=True)['peak_bytes']
            results.append(result)
            print(f"{result['nni']:<9} {space:<12} {method:<9} peak {result['peak_bytes'] / 2**20:8.1f} MiB  "
                  f"{result['seconds_per_step'] * 1e3:8.0f} ms/step", flush=True)
    if args.out:
        path = Path(args.out)
        previous = json.loads(path.read_text()) if path.exists() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(previous + results, indent=1) + '\n')


if __name__ == '__main__':
    main()
