"""The single-path floor: a search step of proxyless_rs against the same step written in plain torch.

    python benchmarks/floor.py                  # all cases, results in benchmarks/results/floor.json
    python benchmarks/floor.py --smoke          # tiny shapes, a few samples (what CI runs)
    python benchmarks/floor.py --case overhead --threads 1
    python benchmarks/floor.py --device cuda    # on a GPU (scripts/gpu_check.sh runs this)
    python benchmarks/floor.py --device cuda --profile   # what each step runs: ops, kernel launches, syncs

A weight step's floor is the child network's training step: the sampled path as plain modules (the
very candidate modules the supernet holds, so the same weights), forward and backward. An
architecture step's floor is that child's forward, the backward of the data gradient alone (the
child's weights frozen), and the other n - 1 candidates' forwards on each layer's saved input, each dotted
with the layer's output gradient, then the binary-gate formula of the ProxylessNAS paper
(``dL/dalpha_i = p_i (dot_i - sum_j p_j dot_j)``) into ``alpha.grad``.

proxyless_rs's steps are README's recipe: a draw (a ``Resampler`` of the supernet), then
forward and backward inside ``no_arch_grad`` (weight step) or ``no_weight_grad`` (architecture
step); the draw and the blocks count against it, as they do in a search (the resampler and the
blocks are made once, outside the loop, as README shows). The floor draws nothing: it is handed
our draw. Each step first clears the gradients of what its optimizer would hold, as
``optimizer.zero_grad()`` does: ours every weight of the supernet, the floor its child's.

Both run in one process on the same supernet; samples alternate between them (the order flips every
sample) so that drift of the machine hits both alike, and step j of sample i runs, in both, the
architecture of draw j from seed i: ours draws it in the step, the floor is handed it, one child
network per step, as a search runs a new child at every step. Reported: min / median / max
milliseconds per step and the median of the paired ratios ours / floor (1.0 is the floor; > 1 is
our overhead). The floor also checks itself: its alpha
gradient must equal ours on the same draw and data (to float rounding), or the script fails.

``--profile`` times nothing: it runs a few steps of each under ``torch.profiler`` and counts, per
step, the operators each runs (every level: ``aten::linear`` and the ``aten::addmm`` inside it),
the kernel launches and the host-device copies and synchronisations of the CUDA runtime, and
lists the operators ours runs more often than the floor. On a GPU, where a launch costs several
µs of host time, those counts are what a step's excess is made of.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxyless_rs  # noqa: E402
import run  # noqa: E402
from run import MALLOC_PINS, machine, sync  # noqa: E402
from supernets import ConvSupernet, MixedChain  # noqa: E402

RESULTS = Path(__file__).resolve().parent / 'results'


class Case:
    def __init__(self, name: str, description: str, build: Callable[[], nn.Module],
                 make_input: Callable[[], torch.Tensor], samples: int, steps_per_sample: int):
        self.name, self.description, self.build, self.make_input = name, description, build, make_input
        self.samples, self.steps_per_sample = samples, steps_per_sample


def cases(smoke: bool) -> list[Case]:
    layer, inp = proxyless_rs.ProxylessMixedLayer, proxyless_rs.ProxylessMixedInput
    if smoke:
        return [
            Case('overhead', 'L=2, n=3, Linear(8) + ReLU, batch 2 (smoke)',
                 partial(MixedChain, layer, inp, depth=2, n=3, dim=8, act=torch.relu), lambda: torch.randn(2, 8), 3, 2),
            Case('conv', 'conv supernet, 1 block, 4 channels, 8x8 (smoke)',
                 partial(ConvSupernet, layer, inp, depth=1, channels=4), lambda: torch.randn(2, 3, 8, 8), 3, 1),
        ]
    return [
        Case('overhead', 'L=20, n=7, Linear(64) + ReLU, batch 8',
             partial(MixedChain, layer, inp, depth=20, n=7, dim=64, act=torch.relu), lambda: torch.randn(8, 64),
             21, 20),
        Case('compute', 'L=8, n=7, Linear(1024) + ReLU, batch 256',
             partial(MixedChain, layer, inp, depth=8, n=7, dim=1024, act=torch.relu), lambda: torch.randn(256, 1024),
             11, 1),
        Case('conv', 'MobileNetV2 blocks k3/5/7 x e3/6 + identity + zero, L=4, 16 ch, 32x32, batch 16',
             partial(ConvSupernet, layer, inp, depth=4, channels=16), lambda: torch.randn(16, 3, 32, 32), 21, 1),
    ]


def loss_of(out: torch.Tensor) -> torch.Tensor:
    return out.square().mean()


# ---- ours: README's recipe -------------------------------------------------------------------------

def zero_grad(weights: list) -> None:
    """What ``optimizer.zero_grad()`` does (set_to_none, torch's default): a gradient set is cleared."""
    for p in weights:
        if p.grad is not None:
            p.grad = None


def ours_step(net: nn.Module, x: torch.Tensor, weights: list, resample: proxyless_rs.Resampler,
              block: proxyless_rs.no_arch_grad | proxyless_rs.no_weight_grad) -> None:
    """A weight step (inside ``no_arch_grad``) or an architecture step (inside ``no_weight_grad``)."""
    resample()
    zero_grad(weights)
    with block:
        loss_of(net(x)).backward()


# ---- the floor: plain torch on the path our draw picked ---------------------------------------------

class Floor:
    """The child networks of ``net``'s draws, as plain torch over ``net``'s own modules.

    ``prepare()`` (outside the timed region) builds the child of the current draw, ``prepare(n)`` those
    of ``n`` new draws: each a shallow copy of the supernet whose mixed layers are replaced by their
    sampled candidates, so that what lies between the layers is the same code and the weights are
    the same tensors; and a second copy whose candidates record their input and output, for the
    architecture step. Each step runs the next child in turn, as a search runs a new child at every
    step (the same child at every step would keep its weights in the cache, which a search does not)."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.layers = net.mixed()
        self.resample = proxyless_rs.Resampler(net)
        self.weights = weights_of(net)
        self.record: list = []
        self.children: list[_Child] = []
        self.next = 0

    def prepare(self, draws: int | None = None) -> None:
        if draws is None:
            self.children = [_Child(self.net, self.layers, self.record)]
        else:
            self.children = []
            for _ in range(draws):
                self.resample()
                self.children.append(_Child(self.net, self.layers, self.record))
        self.next = 0

    def _take(self) -> _Child:
        child = self.children[self.next]
        self.next = (self.next + 1) % len(self.children)
        return child

    def weight_step(self, x: torch.Tensor) -> None:
        child = self._take()
        zero_grad(child.weights)
        loss_of(child.net(x)).backward()

    def arch_step(self, x: torch.Tensor) -> None:
        child = self._take()
        zero_grad(child.weights)
        record = self.record
        record.clear()
        for p in child.weights:
            p.requires_grad = False
        try:
            out = child.recording(x)
            grads = torch.autograd.grad(loss_of(out), [o for _, o in record])
        finally:
            for p in child.weights:
                p.requires_grad = True
        with torch.no_grad():
            for layer, index, (inp, output), grad in zip(self.layers, child.indices, record, grads):
                outputs = torch.stack([output if k == index else layer.candidate(k)(inp)
                                       for k in range(len(layer.names))])
                dots = outputs.view(len(outputs), -1).mv(grad.view(-1))
                alpha = layer._arch_alpha
                p = torch.softmax(alpha, -1)
                g = p * (dots - p.dot(dots))
                alpha.grad = g if alpha.grad is None else alpha.grad.add_(g)


class _Child:
    """The child network of the supernet's current draw (see ``Floor``)."""

    def __init__(self, net: nn.Module, layers: list, record: list):
        self.indices = [layer.active_index for layer in layers]
        chosen = [layer.candidate(index) for layer, index in zip(layers, self.indices)]
        self.net = _with_layers(net, chosen)
        self.recording = _with_layers(net, [_Recorder(m, record) for m in chosen])
        self.weights = weights_of(self.net)


def weights_of(net: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``net`` but the alphas: what a weight optimizer holds and clears."""
    return [p for name, p in net.named_parameters() if not name.endswith('_arch_alpha')]


def _with_layers(net: nn.Module, modules: list[nn.Module]) -> nn.Module:
    child = copy.copy(net)
    child.__dict__['_modules'] = dict(net._modules)
    holder = 'layers' if 'layers' in net._modules else 'blocks'
    child._modules[holder] = nn.ModuleList(modules)
    return child


class _Recorder(nn.Module):
    def __init__(self, module: nn.Module, record: list):
        super().__init__()
        self.module, self.record = module, record

    def forward(self, x):
        out = self.module(x)
        if out is x:  # identity: its own node, so that its gradient is the block's alone
            out = x.view_as(x)
        if not out.requires_grad:  # the first layer: nothing before it needs a gradient
            out = out.detach().requires_grad_()
        self.record.append((x.detach(), out))
        return out


# ---- timing -------------------------------------------------------------------------------------------

def check_same_alpha_grad(case: Case) -> float:
    """The floor's architecture step gives our alpha gradient (it is the formula, not a guess)."""
    torch.manual_seed(0)
    net = case.build().to(run.DEVICE)
    x = case.make_input().to(run.DEVICE)
    floor = Floor(net)
    torch.manual_seed(1)
    ours_step(net, x, floor.weights, proxyless_rs.Resampler(net), proxyless_rs.no_weight_grad(net))
    ours = [layer._arch_alpha.grad.clone() for layer in floor.layers]
    net.zero_grad(set_to_none=True)
    floor.prepare()
    floor.arch_step(x)
    worst = max(float((a - layer._arch_alpha.grad).abs().max() / (a.abs().max() + 1e-30))
                for a, layer in zip(ours, floor.layers))
    if worst > 1e-4:
        raise AssertionError(f'{case.name}: the floor\'s alpha gradient differs from ours by {worst:.2e} (relative)')
    return worst


def step_pair(case: Case, step: str, blocks: str) -> tuple[Floor, Callable[[], None], Callable[[], None]]:
    """A new supernet of ``case`` and its floor, and one ``step`` of each: ours (README's recipe, its
    block made ``once`` or per step) and the floor's."""
    torch.manual_seed(0)
    net = case.build().to(run.DEVICE)
    x = case.make_input().to(run.DEVICE)
    floor = Floor(net)
    floor_step = floor.weight_step if step == 'weight' else floor.arch_step

    def make_block():
        return proxyless_rs.no_arch_grad(net) if step == 'weight' else proxyless_rs.no_weight_grad(net)

    block = make_block()
    resample = proxyless_rs.Resampler(net)

    def run_ours() -> None:
        ours_step(net, x, floor.weights, resample, block if blocks == 'once' else make_block())

    def run_floor() -> None:
        floor_step(x)

    return floor, run_ours, run_floor


def time_pair(case: Case, step: str, blocks: str = 'once') -> dict:
    floor, run_ours, run_floor = step_pair(case, step, blocks)
    times: dict[str, list[float]] = {'floor': [], 'ours': []}
    for sample in range(case.samples + 1):  # sample 0 is a warm-up
        order = [('ours', run_ours), ('floor', run_floor)]
        for name, step_fn in (order if sample % 2 else order[::-1]):
            # Step j of both runs the architecture of draw j from seed `sample`: the floor's children
            # are drawn here, untimed; ours draws them again in its steps.
            torch.manual_seed(sample)
            floor.prepare(case.steps_per_sample)
            torch.manual_seed(sample)
            sync()
            start = time.perf_counter()
            for _ in range(case.steps_per_sample):
                step_fn()
            sync()
            elapsed = (time.perf_counter() - start) / case.steps_per_sample
            if name == 'ours' and [layer.active_index for layer in floor.layers] != floor.children[-1].indices:
                raise AssertionError(f'{case.name}: our last draw is not the floor\'s last child')
            if sample:
                times[name].append(elapsed * 1e3)
    result = {'case': case.name, 'step': step, 'description': case.description, 'unit': 'ms/step'}
    for name, values in times.items():
        result[name] = {'min': min(values), 'median': statistics.median(values), 'max': max(values)}
    ratios = [o / f for o, f in zip(times['ours'], times['floor'])]
    result['ratios'] = ratios
    result['ratio'] = statistics.median(ratios)
    return result


LAUNCHES = ('cudaLaunchKernel', 'cuLaunchKernel', 'cudaLaunchKernelExC', 'cuLaunchKernelEx')


def _counts(fn: Callable[[], None], steps: int) -> collections.Counter:
    """How often each operator and CUDA runtime call ran in ``steps`` calls of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.DEVICE.type == 'cuda' else [])
    sync()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync()
    return collections.Counter(event.name for event in prof.events()
                               if event.device_type == torch.autograd.DeviceType.CPU)


def profile_pair(case: Case, step: str, blocks: str = 'once', steps: int = 5, top: int = 12) -> dict:
    """Operators, kernel launches, copies and synchronisations per step of ours and of the floor, on
    the same draws (see the module's docstring)."""
    floor, run_ours, run_floor = step_pair(case, step, blocks)
    fns = {'ours': run_ours, 'floor': run_floor}
    per_step = {}
    for name, fn in fns.items():
        for seed in (0, 1):  # seed 0 warms up; seed 1 is counted, the same draws for both
            torch.manual_seed(seed)
            floor.prepare(steps)
            torch.manual_seed(seed)
            counts = _counts(fn, steps)
        per_step[name] = {op: count / steps for op, count in counts.items()}

    def total(name: str, pick: Callable[[str], bool]) -> float:
        return sum(count for op, count in per_step[name].items() if pick(op))

    result = {'case': case.name, 'step': step, 'description': case.description, 'per_step': per_step}
    for name in fns:
        result[name] = {'ops': total(name, lambda op: op.startswith('aten::')),
                        'launches': total(name, lambda op: op in LAUNCHES),
                        'copies': total(name, lambda op: op.startswith('cudaMemcpy')),
                        'syncs': total(name, lambda op: 'Synchronize' in op)}
    more = {op: per_step['ours'].get(op, 0.0) - per_step['floor'].get(op, 0.0)
            for op in set(per_step['ours']) | set(per_step['floor'])}
    result['more'] = sorted(((op, d) for op, d in more.items() if d > 0), key=lambda item: -item[1])[:top]
    return result


def profile_table(results: list[dict]) -> str:
    lines = ['| case | step | aten ops (ours / floor) | kernel launches | copies | syncs '
             '| ours runs more often, per step |',
             '|---|---|---|---|---|---|---|']
    for r in results:
        o, f = r['ours'], r['floor']
        more = ', '.join(f'{op} +{d:g}' for op, d in r['more'][:6])
        lines.append(f"| {r['case']} | {r['step']} | {o['ops']:g} / {f['ops']:g} | {o['launches']:g} / "
                     f"{f['launches']:g} | {o['copies']:g} / {f['copies']:g} | {o['syncs']:g} / {f['syncs']:g} | "
                     f"{more} |")
    return '\n'.join(lines)


def table(results: list[dict]) -> str:
    lines = ['| case | step | floor ms (min / median / max) | ours ms (min / median / max) | ours / floor |',
             '|---|---|---|---|---|']
    for r in results:
        def fmt(t):
            return f"{t['min']:.3f} / {t['median']:.3f} / {t['max']:.3f}"
        lines.append(f"| {r['case']}: {r['description']} | {r['step']} | {fmt(r['floor'])} | {fmt(r['ours'])} | "
                     f"{r['ratio']:.2f}x |")
    return '\n'.join(lines)


def main() -> None:
    if any(os.environ.get(k) != v for k, v in MALLOC_PINS.items()) \
            and os.environ.get('PROXYLESS_BENCH_NO_MALLOC_PIN') is None:  # as benchmarks/run.py, for the same reason
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_PINS})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--smoke', action='store_true')
    parser.add_argument('--case', action='append', help='run only these cases (overhead, compute, conv)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    parser.add_argument('--device', default='cpu', help="'cpu' (default) or 'cuda'")
    parser.add_argument('--blocks', choices=['once', 'per-step'], default='once',
                        help="ours' no_arch_grad / no_weight_grad made once before the loop (README's recipe, the "
                             "default) or made anew inside every step")
    parser.add_argument('--profile', action='store_true',
                        help='count what each step runs (operators, kernel launches, syncs) instead of timing it')
    parser.add_argument('--out', type=Path, default=RESULTS / 'floor.json', help='JSON; the table goes beside it (.md)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run.DEVICE = torch.device(args.device)
    if run.DEVICE.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: CUDA is not available on this machine')
    results = []
    for case in cases(args.smoke):
        if args.case and case.name not in args.case:
            continue
        worst = check_same_alpha_grad(case)
        for step in ('weight', 'arch'):
            if args.profile:
                result = profile_pair(case, step, args.blocks)
                results.append(result)
                print(f"{case.name:9s} {step:6s} ops {result['ours']['ops']:g} / {result['floor']['ops']:g}, "
                      f"launches {result['ours']['launches']:g} / {result['floor']['launches']:g} (ours / floor)",
                      flush=True)
                continue
            result = time_pair(case, step, args.blocks)
            result['blocks'] = args.blocks
            result['alpha_grad_rel_diff'] = worst
            results.append(result)
            print(f"{case.name:9s} {step:6s} floor {result['floor']['median']:8.3f} ms  "
                  f"ours {result['ours']['median']:8.3f} ms  ours/floor {result['ratio']:.2f}x", flush=True)
    pins = ', '.join(f'{k}={v}' for k, v in MALLOC_PINS.items())
    header = f'Machine: {machine()}; device {run.DEVICE}; glibc malloc thresholds pinned ({pins}).'
    markdown = header + '\n\n' + (profile_table(results) if args.profile else table(results)) + '\n'
    print()
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({'machine': machine(), 'device': str(run.DEVICE), 'smoke': args.smoke,
                                    'results': results}, indent=1) + '\n')
    args.out.with_suffix('.md').write_text(markdown)
    print(f'written: {args.out}, {args.out.with_suffix(".md")}')


if __name__ == '__main__':
    main()
