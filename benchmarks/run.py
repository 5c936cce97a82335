"""Benchmark proxyless_rs against NNI 2.10's ProxylessNAS classes, in one process, interleaved.

    python benchmarks/run.py                 # all cases, results in benchmarks/results/
    python benchmarks/run.py --smoke         # tiny shapes, a few steps (what CI runs)
    python benchmarks/run.py --case overhead --case conv
    python benchmarks/run.py --device cuda   # on a GPU (scripts/gpu_check.sh runs this)

Each case builds the same supernet with both implementations under the same seed and times
one training step (resample, forward, backward; the weight update is left out because it is the
same in both). Timing samples alternate between the implementations so that drift of the
machine hits both alike, and sample i of both runs under seed i (the same sampled paths).
Reported: min / median / max milliseconds per step, and the speed-up: the median over samples of
the paired ratio NNI / proxyless_rs (> 1 means proxyless_rs is faster). Results go to JSON, a
Markdown table and a PNG chart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from supernets import ConvSupernet, InputChain, MixedChain  # noqa: E402

RESULTS = Path(__file__).resolve().parent / 'results'

# Where the benchmarks run: set once by main() from --device. On CUDA, every timed region ends
# with torch.cuda.synchronize(), so that it measures the work and not only its launch.
DEVICE = torch.device('cpu')


def sync() -> None:
    if DEVICE.type == 'cuda':
        torch.cuda.synchronize(DEVICE)


def per_call_us(fn: Callable[[], object], repeats: int, rounds: int = 5) -> list[float]:
    """The mean time of a call of ``fn`` in each of ``rounds`` rounds of ``repeats`` calls, in µs
    (each round ended by a synchronize on CUDA)."""
    times = []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        times.append((time.perf_counter() - start) / repeats * 1e6)
    return times


def implementations():
    from nni.nas.oneshot.pytorch.supermodule.proxyless import ProxylessMixedInput, ProxylessMixedLayer

    import proxyless_rs

    return {
        'nni': (ProxylessMixedLayer, ProxylessMixedInput),
        'proxyless_rs': (proxyless_rs.ProxylessMixedLayer, proxyless_rs.ProxylessMixedInput),
    }


@dataclasses.dataclass
class Case:
    name: str
    description: str
    build: Callable[[type, type], nn.Module]
    make_input: Callable[[], torch.Tensor]
    samples: int
    steps_per_sample: int


def supernet_cases(smoke: bool) -> list[Case]:
    if smoke:
        return [
            Case('overhead', 'L=2, n=3, Linear(8), batch 2 (smoke)', partial(MixedChain, depth=2, n=3, dim=8),
                 lambda: torch.randn(2, 8), 3, 2),
            Case('conv', 'conv supernet, 1 block, 4 channels, 8x8 (smoke)', partial(ConvSupernet, depth=1, channels=4),
                 lambda: torch.randn(2, 3, 8, 8), 3, 1),
            Case('input', 'MixedInput, L=2, n=6, dim 8 (smoke)', partial(InputChain, depth=2, n=6, dim=8),
                 lambda: torch.randn(2, 8), 3, 2),
        ]
    return [
        Case('overhead', 'L=20, n=7, Linear(64), batch 8', partial(MixedChain, depth=20, n=7, dim=64),
             lambda: torch.randn(8, 64), 15, 10),
        Case('medium', 'L=20, n=7, Linear(256), batch 64', partial(MixedChain, depth=20, n=7, dim=256),
             lambda: torch.randn(64, 256), 11, 4),
        Case('compute', 'L=4, n=7, Linear(1024), batch 256', partial(MixedChain, depth=4, n=7, dim=1024),
             lambda: torch.randn(256, 1024), 15, 1),
        Case('conv', 'MobileNetV2 blocks k3/5/7 x e3/6 + identity + zero, L=4, 16 ch, 32x32, batch 16',
             partial(ConvSupernet, depth=4, channels=16), lambda: torch.randn(16, 3, 32, 32), 15, 1),
        Case('input', 'MixedInput, L=20, n=6, dim 64, batch 8', partial(InputChain, depth=20, n=6, dim=64),
             lambda: torch.randn(8, 64), 15, 10),
    ]


def training_step(net: nn.Module, x: torch.Tensor) -> None:
    """An architecture step without the optimizer: resample, forward, backward (and, for two-path
    layers, the rescale that follows the optimizer step)."""
    memo: dict = {}
    for module in net.mixed():
        memo.update(module.resample(memo))
    net.zero_grad(set_to_none=True)
    net(x).square().mean().backward()
    if getattr(net.mixed()[0], 'mode', 'full') == 'two':
        import proxyless_rs

        proxyless_rs.rescale_two_path(net)


def time_case(case: Case, impls, baseline: str = 'nni', contender: str = 'proxyless_rs',
              steps: dict[str, Callable] | None = None) -> dict:
    nets, inputs = {}, {}
    for name, (layer_cls, input_cls) in impls.items():
        torch.manual_seed(0)
        nets[name] = case.build(layer_cls, input_cls).to(DEVICE)
        inputs[name] = case.make_input().to(DEVICE)
    times: dict[str, list[float]] = {name: [] for name in impls}
    order = list(impls)
    for sample in range(case.samples + 1):  # sample 0 is a warm-up
        for name in (order if sample % 2 else reversed(order)):
            torch.manual_seed(sample)
            sync()
            start = time.perf_counter()
            step = (steps or {}).get(name, training_step)
            for _ in range(case.steps_per_sample):
                step(nets[name], inputs[name])
            sync()
            elapsed = (time.perf_counter() - start) / case.steps_per_sample
            if sample:
                times[name].append(elapsed * 1e3)
    result = {'case': case.name, 'description': case.description, 'unit': 'ms/step'}
    for name, values in times.items():
        result[name] = {'min': min(values), 'median': statistics.median(values), 'max': max(values)}
    # Sample i of both ran under seed i (for a supernet: the same sampled architectures), so the
    # speed-up is the median of the paired ratios, not a ratio of medians of different samples.
    ratios = [b / c for b, c in zip(times[baseline], times[contender])]
    result['ratios'] = ratios
    result['speedup'] = statistics.median(ratios)
    return result


def two_path_cases(smoke: bool) -> list[dict]:
    """proxyless_rs's architecture step in full mode against two-path mode, same process."""
    import functools

    import proxyless_rs

    modes = {mode: (functools.partial(proxyless_rs.ProxylessMixedLayer, mode=mode),
                    functools.partial(proxyless_rs.ProxylessMixedInput, mode=mode)) for mode in ('full', 'two')}
    results = []
    for case in supernet_cases(smoke):
        if case.name in ('compute', 'conv'):
            result = time_case(case, modes, baseline='full', contender='two')
            result['case'] = f'two-path {case.name}'
            results.append(result)
    return results


def arch_step_cases(smoke: bool) -> list[dict]:
    """proxyless_rs's architecture step with every weight gradient computed (what NNI and a plain
    backward do) against :func:`proxyless_rs.no_weight_grad` (alpha's gradient only), full and
    two-path, on the compute-bound chain of Linear(1024) + ReLU: same nets, seeds, draws. Then the
    same in a whole search step: that architecture step followed by a weight step (a draw, forward
    and backward under ``no_arch_grad``)."""
    import functools

    import proxyless_rs

    def frozen_step(net: nn.Module, x: torch.Tensor) -> None:
        with proxyless_rs.no_weight_grad(net):
            training_step(net, x)

    def weight_step(net: nn.Module, x: torch.Tensor) -> None:
        memo: dict = {}
        for module in net.mixed():
            memo.update(module.resample(memo))
        net.zero_grad(set_to_none=True)
        with proxyless_rs.no_arch_grad(net):
            net(x).square().mean().backward()

    def search_step(arch_step: Callable) -> Callable:
        return lambda net, x: (arch_step(net, x), weight_step(net, x))

    depth, dim, batch = (2, 16, 4) if smoke else (8, 1024, 256)
    results = []
    for step, (baseline, contender) in [('arch step', (training_step, frozen_step)),
                                        ('search step', (search_step(training_step), search_step(frozen_step)))]:
        for mode in ('full', 'two'):
            layers = (functools.partial(proxyless_rs.ProxylessMixedLayer, mode=mode), proxyless_rs.ProxylessMixedInput)
            case = Case(f'{step} {mode}', f'L={depth}, n=7, Linear({dim}) + ReLU, batch {batch}',
                        partial(MixedChain, depth=depth, n=7, dim=dim, act=torch.relu),
                        lambda: torch.randn(batch, dim), 3 if smoke else 11, 1)
            result = time_case(case, {'weights': layers, 'alpha only': layers}, baseline='weights',
                               contender='alpha only', steps={'weights': baseline, 'alpha only': contender})
            results.append(result)
    return results


def hook_cost(impls, n: int, dim: int, batch: int, repeats: int) -> list[dict]:
    """Per layer-backward cost of the mixed layer itself, net of the candidates' own work.

    Two figures:

    - ``hook``: the backward hook callable alone: save a forward, call the hook as autograd
      would (``hook(module, grad_input, grad_output)``), minus the n-1 candidate forwards it
      runs (through the layer's ``forward_path``, as both implementations do);
    - ``layer``: everything the mixed layer adds to a training step:
      t(forward+backward through the mixed layer) - t(forward+backward through the sampled
      candidate alone) - t(the n-1 other forwards), i.e. the hook plus its registration and
      autograd's calling of it.
    """
    torch.manual_seed(0)
    x = torch.randn(batch, dim, device=DEVICE, requires_grad=True)
    grad = torch.randn(batch, dim, device=DEVICE)

    def timeit(fn) -> float:
        return min(per_call_us(fn, repeats))

    results = {
        kind: {'case': f'{kind}-n{n}', 'unit': 'us/layer-backward',
               'description': f'{what}, n={n}, Linear({dim}), batch {batch}'}
        for kind, what in (('hook', 'backward hook alone, net of candidate forwards'),
                           ('layer', 'whole mixed-layer overhead per call'))
    }
    for name, (layer_cls, _) in impls.items():
        torch.manual_seed(0)
        layer = layer_cls([(f'op{k}', nn.Linear(dim, dim)) for k in range(n)], nn.Parameter(torch.zeros(n)),
                          nn.Softmax(-1), 'layer').to(DEVICE)
        layer.resample({'layer': 'op0'})
        hook_alone, hook_baseline = _hook_alone(layer, x, grad, ours=name == 'proxyless_rs')

        def mixed(layer=layer):
            layer(x).sum().backward()

        def plain(sampled=layer.op0):
            sampled(x).sum().backward()

        def other_forwards(layer=layer):
            with torch.no_grad():
                for k in range(1, n):
                    layer.forward_path(k, x)

        hook_samples, layer_samples = [], []
        for _ in range(3):
            others = timeit(other_forwards)
            hook_samples.append(timeit(hook_alone) - timeit(hook_baseline) - others)
            layer_samples.append(timeit(mixed) - timeit(plain) - others)
        for kind, samples in (('hook', hook_samples), ('layer', layer_samples)):
            results[kind][name] = {'min': min(samples), 'median': statistics.median(samples), 'max': max(samples)}
    for result in results.values():
        result['speedup'] = result['nni']['median'] / result['proxyless_rs']['median']
    return list(results.values())


def _hook_alone(layer, x: torch.Tensor, grad: torch.Tensor,
                ours: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    """One call of the layer's binary-gate backward on a saved forward, as autograd would make it,
    and what to subtract from its time.

    NNI's: save the forward in its context, call its full backward hook (the sampled candidate's
    forward is done once, outside). proxyless_rs's: the context runs the sampled candidate and
    passes its output through the gradient tap (``ctx.forward``); then the tap's hook is called with
    the output gradient; the candidate's forward alone is subtracted.
    """
    sampled = layer.op0
    if not ours:
        output = sampled(x)
        hook = layer.ctx.backward_hook

        def nni_hook() -> None:
            layer.ctx.save_forward_context(((x,), {}), output, 0)
            hook(layer, (None,), (grad,))

        return nni_hook, lambda: None

    def our_hook() -> torch.Tensor:
        # The output's node is the gradient tap; its hook returns alpha's gradient. Called as in a
        # backward without create_graph: with grad mode off.
        hooked = layer.ctx.forward(layer._alternatives(), (x,), None, 0, layer._arch_alpha)
        with torch.no_grad():
            return hooked.grad_fn.call_backward((grad,), True)

    def candidate_forward() -> None:
        sampled(x)

    # The hook must have done the work being timed: an alpha gradient, and no saved call left.
    if our_hook() is None or len(layer.ctx):
        raise RuntimeError('benchmark: the output hook did not run its backward (an API change in the core?)')
    return our_hook, candidate_forward


def whole_search(epochs: int, samples: int, smoke: bool) -> dict:
    """The digits search through RetiariiExperiment: NNI's strategy.Proxyless() against
    proxyless_rs.strategy.Proxyless() (default, not exact), interleaved, same seeds."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'examples'))
    import nni.retiarii.strategy as nni_strategy

    import proxyless_rs
    from digits_nni import search

    strategies = {'nni': nni_strategy.Proxyless, 'proxyless_rs': proxyless_rs.strategy.Proxyless}
    extra = {'limit_train_batches': 2} if smoke else {}
    times: dict[str, list[float]] = {name: [] for name in strategies}
    for sample in range(samples + 1):  # sample 0 is a warm-up
        for name in (list(strategies) if sample % 2 else list(reversed(strategies))):
            _, _, seconds, _ = search(strategies[name](), epochs, seed=sample, progress=False, **extra)
            if sample:
                times[name].append(seconds * 1e3)
    result = {'case': 'search', 'unit': 'ms/search',
              'description': f'digits search through RetiariiExperiment, {epochs} epoch(s) of 31 steps, '
                             'strategy.Proxyless()'}
    for name, values in times.items():
        result[name] = {'min': min(values), 'median': statistics.median(values), 'max': max(values)}
    result['speedup'] = result['nni']['median'] / result['proxyless_rs']['median']
    return result


def saved_contexts(impls, steps: int) -> dict:
    """Saved forwards alive after `steps` steps, each followed by a validation forward under no_grad."""
    result = {'case': 'memory', 'description': f'saved forwards alive after {steps} train steps + no_grad validation',
              'unit': 'saved forwards'}
    for name, (layer_cls, input_cls) in impls.items():
        torch.manual_seed(0)
        net = MixedChain(layer_cls, input_cls, 4, 3, 16).to(DEVICE)
        x = torch.randn(4, 16, device=DEVICE)
        after_backward = 0
        for _ in range(steps):
            training_step(net, x)
            after_backward = max(after_backward, sum(_saved(m) for m in net.mixed()))
            with torch.no_grad():
                net(x)
        result[name] = {'after_backward': after_backward, 'after_validation': sum(_saved(m) for m in net.mixed())}
    return result


def _saved(module) -> int:
    ctx = module.ctx
    return len(ctx.layer_input) if hasattr(ctx, 'layer_input') else len(ctx)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    where = f'{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s)'
    if DEVICE.type == 'cuda':
        where = f'{torch.cuda.get_device_name(DEVICE)} (CUDA {torch.version.cuda}), host {where}'
    return where


def markdown(results: list[dict], header: str) -> str:
    lines = [header, '', '| case | NNI 2.10 min / median / max | proxyless_rs min / median / max '
                         '| speed-up (median of paired ratios) |', '| --- | --- | --- | --- |']
    fmt = lambda d: f"{d['min']:.3g} / {d['median']:.3g} / {d['max']:.3g}"  # noqa: E731
    for r in results:
        if r['case'] == 'memory' or 'full' in r or 'weights' in r:
            continue
        lines.append(f"| {r['case']}: {r['description']} ({r['unit']}) | {fmt(r['nni'])} | {fmt(r['proxyless_rs'])} "
                     f"| {r['speedup']:.2f}x |")
    two_path = [r for r in results if 'full' in r]
    if two_path:
        lines += ['', '| two-path vs full (proxyless_rs architecture step) | full min / median / max | '
                      'two min / median / max | speed-up (median of paired ratios) |', '| --- | --- | --- | --- |']
        lines += [f"| {r['case']}: {r['description']} ({r['unit']}) | {fmt(r['full'])} | {fmt(r['two'])} "
                  f"| {r['speedup']:.2f}x |" for r in two_path]
    arch_steps = [r for r in results if 'weights' in r]
    if arch_steps:
        lines += ['', '| architecture step: every weight gradient vs alpha\'s only (`no_weight_grad`); search '
                      'step: the same, then a weight step | weights '
                      'min / median / max | alpha only min / median / max | speed-up (median of paired ratios) |',
                  '| --- | --- | --- | --- |']
        lines += [f"| {r['case']}: {r['description']} ({r['unit']}) | {fmt(r['weights'])} | {fmt(r['alpha only'])} "
                  f"| {r['speedup']:.2f}x |" for r in arch_steps]
    for r in results:
        if r['case'] == 'memory':
            lines += ['', f"{r['description']}: NNI 2.10 {r['nni']['after_validation']} "
                          f"(max {r['nni']['after_backward']} right after a backward), proxyless_rs "
                          f"{r['proxyless_rs']['after_validation']} (max {r['proxyless_rs']['after_backward']})."]
    return '\n'.join(lines) + '\n'


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    timed = [r for r in results if 'speedup' in r]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(timed) + 1.5))
    names = [r['case'] for r in timed]
    colors = ['tab:blue' if 'full' in r else 'tab:green' if 'weights' in r else 'tab:orange' for r in timed]
    ax.barh(names, [r['speedup'] for r in timed], color=colors)
    ax.axvline(1.0, color='k', lw=1)
    ax.set_xscale('log')
    for i, r in enumerate(timed):
        ax.text(r['speedup'], i, f" {r['speedup']:.2f}x", va='center')
    ax.invert_yaxis()
    ax.set_xlabel('speed-up, median of paired time ratios (log scale)')
    ax.set_title('orange: proxyless_rs over NNI 2.10; blue: two-path over full mode; green: alpha-only arch step',
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# glibc serves large allocations with mmap below a threshold that it moves as the process runs,
# so the same code can pay page faults for its big activations in one timing sample and not in
# the next (seen here: +-40% on the conv supernet). Pinning the threshold for the whole process
# makes large tensors come from the heap for both implementations alike.
MALLOC_PINS = {'MALLOC_MMAP_THRESHOLD_': str(2 ** 31), 'MALLOC_TRIM_THRESHOLD_': str(2 ** 31)}


def main(argv=None):
    if argv is None and any(os.environ.get(k) != v for k, v in MALLOC_PINS.items()) \
            and os.environ.get('PROXYLESS_BENCH_NO_MALLOC_PIN') is None:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_PINS})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--smoke', action='store_true', help='tiny shapes, a few steps: checks the harness runs')
    parser.add_argument('--case', action='append', help='run only these cases (overhead, medium, compute, conv, '
                                                         'input, two-path, arch-step, hook, search, memory)')
    parser.add_argument('--threads', type=int, default=1, help='torch.set_num_threads (default 1)')
    parser.add_argument('--out', type=Path, default=RESULTS)
    parser.add_argument('--device', default='cpu', help="where the supernets run: 'cpu' (default) or 'cuda'")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: CUDA is not available on this machine')
    torch.set_num_threads(args.threads)
    impls = implementations()
    everything = ['overhead', 'medium', 'compute', 'conv', 'input', 'two-path', 'arch-step', 'hook', 'search',
                  'memory']
    if DEVICE.type != 'cpu':
        everything.remove('search')  # the Lightning search of the demo runs on the CPU only
    wanted = set(args.case or everything)

    results = []
    for case in supernet_cases(args.smoke):
        if case.name in wanted:
            results.append(time_case(case, impls))
            print(f"{case.name:>9}: NNI {results[-1]['nni']['median']:.3f} ms, proxyless_rs "
                  f"{results[-1]['proxyless_rs']['median']:.3f} ms, {results[-1]['speedup']:.2f}x", flush=True)
    if 'two-path' in wanted:
        for r in two_path_cases(args.smoke):
            results.append(r)
            print(f"{r['case']:>9}: full {r['full']['median']:.3f} ms, two {r['two']['median']:.3f} ms, "
                  f"{r['speedup']:.2f}x", flush=True)
    if 'arch-step' in wanted:
        for r in arch_step_cases(args.smoke):
            results.append(r)
            print(f"{r['case']:>9}: weights {r['weights']['median']:.3f} ms, alpha only "
                  f"{r['alpha only']['median']:.3f} ms, {r['speedup']:.2f}x", flush=True)
    if 'hook' in wanted:
        for n in (4, 8):
            for r in hook_cost(impls, n=n, dim=8 if args.smoke else 64, batch=2 if args.smoke else 8,
                               repeats=20 if args.smoke else 400):
                results.append(r)
                print(f"{r['case']:>9}: NNI {r['nni']['median']:.1f} us, "
                      f"proxyless_rs {r['proxyless_rs']['median']:.1f} us", flush=True)
    if 'search' in wanted:
        results.append(whole_search(epochs=1 if args.smoke else 4, samples=1 if args.smoke else 5, smoke=args.smoke))
        print(f"   search: NNI {results[-1]['nni']['median']:.0f} ms, proxyless_rs "
              f"{results[-1]['proxyless_rs']['median']:.0f} ms, {results[-1]['speedup']:.2f}x", flush=True)
    if 'memory' in wanted:
        results.append(saved_contexts(impls, steps=5 if args.smoke else 100))
        print(f"   memory: {results[-1]}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    pins = ", ".join(f"{k}={v}" for k, v in MALLOC_PINS.items())
    header = f'Machine: {machine()}; device {DEVICE}; glibc malloc thresholds pinned ({pins}).'
    (args.out / 'results.json').write_text(json.dumps({'machine': machine(), 'device': str(DEVICE), 'smoke': args.smoke,
                                                       'results': results}, indent=2))
    (args.out / 'results.md').write_text(markdown(results, header))
    chart(results, args.out / 'speedup.png')
    print(markdown(results, header))
    print(f'written: {args.out}/results.json, results.md, speedup.png')


if __name__ == '__main__':
    main()
