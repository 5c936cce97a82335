"""Searches with a known right answer for value choices: does a short search from uniform alphas
export the value that generated the data?

- ``kernel``: the targets are a random convolution with kernel size 5 applied to random images; the
  space is one convolution whose kernel size is a choice of 1, 3 or 5 (padding ``ks // 2``);
- ``dilation``: the targets are a random 3x3 convolution with dilation 2; the space's convolution
  takes dilation 1, 2 or 3 (padding = dilation): not nested, so a bias towards the largest value
  cannot pass.

Each search trains the weights alone for ``--warmup`` steps, then alternates NNI's two steps (an
architecture step on a validation batch, a weight step on a training batch) for ``--steps`` steps,
and exports the most probable value. ``proxyless`` is
proxyless_rs's strategy's supernet (its mutation hooks); ``darts`` NNI's own DARTS supernet of the
same space (its ``MixedOpDifferentiablePolicy``: the softmax-weighted superkernel), which refuses a
mutable dilation. Prints how many seeds export the true value, per method and task.

    python benchmarks/value_choices.py [--seeds 10] [--steps 100] [--warmup 30]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tests'))

import proxyless_rs  # noqa: E402
from proxyless_rs.nni.version import NNI3, NNI_NAME  # noqa: E402
from value_spaces import Base, Conv2d, choice, resample, space, supernet  # noqa: E402

warnings.filterwarnings('ignore', category=UserWarning)

CHANNELS, SIZE, BATCH = 4, 10, 16
TASKS = {'kernel': ('ks', [1, 3, 5], 5), 'dilation': ('dilation', [1, 2, 3], 2)}


@space
class KernelStudent(Base):
    def __init__(self):
        super().__init__()
        ks = choice('ks', [1, 3, 5])
        self.conv = Conv2d(CHANNELS, CHANNELS, kernel_size=ks, padding=ks // 2, bias=False)

    def forward(self, x):
        return self.conv(x)


@space
class DilationStudent(Base):
    def __init__(self):
        super().__init__()
        d = choice('dilation', [1, 2, 3])
        self.conv = Conv2d(CHANNELS, CHANNELS, kernel_size=3, dilation=d, padding=d, bias=False)

    def forward(self, x):
        return self.conv(x)


def teacher(task: str, seed: int) -> nn.Module:
    torch.manual_seed(1000 + seed)
    if task == 'kernel':
        conv = nn.Conv2d(CHANNELS, CHANNELS, 5, padding=2, bias=False)
    else:
        conv = nn.Conv2d(CHANNELS, CHANNELS, 3, dilation=2, padding=2, bias=False)
    nn.init.normal_(conv.weight, std=0.3)
    return conv.requires_grad_(False)


def batches(task: str, seed: int, count: int, split: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of the task's data for ``seed`` (its teacher), split 0 training, 1 validation."""
    net = teacher(task, seed)
    generator = torch.Generator().manual_seed(2000 + 2 * seed + split)
    out = []
    for _ in range(count):
        x = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=generator)
        out.append((x, net(x)))
    return out


def darts_supernet(model: nn.Module) -> nn.Module:
    """NNI's own DARTS supernet of ``model`` (its strategy's mutation hooks and policy)."""
    if NNI3:
        from nni.nas.strategy import DARTS

        return DARTS().mutate_model(model)
    from nni.nas.oneshot.pytorch.base_lightning import traverse_and_mutate_submodules
    from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
    from nni.nas.oneshot.pytorch.supermodule.differentiable import MixedOpDifferentiablePolicy

    hooks = DartsLightningModule.default_mutation_hooks(None)  # type: ignore[arg-type]
    kwargs = {'mixed_op_sampling': MixedOpDifferentiablePolicy, 'softmax': nn.Softmax(-1)}
    traverse_and_mutate_submodules(model, hooks, kwargs, topdown=True)
    return model


def search(method: str, task: str, seed: int, steps: int = 100, warmup: int = 30) -> Any:
    """The value a search exports, or the error NNI's method refuses the space with."""
    label, values, _ = TASKS[task]
    student = {'kernel': KernelStudent, 'dilation': DilationStudent}[task]
    torch.manual_seed(seed)
    model = student()
    try:
        model = supernet(model, seed=seed) if method == 'proxyless' else darts_supernet(model)
    except Exception as err:  # noqa: BLE001 (reported: NNI's refusal)
        return f'refused: {type(err).__name__}'
    (op,) = [m for m in model.modules() if hasattr(m, 'sampling_policy')]
    alpha = op._arch_alpha[label]
    with torch.no_grad():
        alpha.zero_()  # uniform
    weights = [p for name, p in op.named_parameters() if not name.startswith('_arch_alpha')] if method == 'darts' \
        else list(op.parameters(arch=False))
    weight_optim = torch.optim.Adam(weights, lr=0.02)
    arch_optim = torch.optim.Adam([alpha], lr=0.05, betas=(0.5, 0.999))
    train, val = batches(task, seed, warmup + steps, 0), [None] * warmup + batches(task, seed, steps, 1)
    torch.manual_seed(seed)
    try:
        for (x, y), validation in zip(train, val):
            if validation is not None:
                arch_step(method, model, arch_optim, *validation)
            if method == 'proxyless':
                resample(model)
            weight_optim.zero_grad()
            if method == 'proxyless':
                with proxyless_rs.no_arch_grad(model):
                    F.mse_loss(model(x), y).backward()
            else:
                F.mse_loss(model(x), y).backward()
            weight_optim.step()
    except Exception as err:  # noqa: BLE001 (reported: NNI's refusal)
        return f'refused: {type(err).__name__}'
    return values[int(torch.argmax(alpha.detach()))]


def arch_step(method: str, model: nn.Module, arch_optim: torch.optim.Optimizer, xv: torch.Tensor,
              yv: torch.Tensor) -> None:
    if method == 'proxyless':
        resample(model)
    arch_optim.zero_grad()
    if method == 'proxyless':
        with proxyless_rs.no_weight_grad(model):
            F.mse_loss(model(xv), yv).backward()
    else:
        F.mse_loss(model(xv), yv).backward()
    arch_optim.step()


def rates(seeds: int, steps: int, warmup: int) -> dict[tuple[str, str], tuple[int, int, list]]:
    result = {}
    for method in ('proxyless', 'darts'):
        for task, (_, _, truth) in TASKS.items():
            exported = [search(method, task, seed, steps, warmup) for seed in range(seeds)]
            result[method, task] = (sum(e == truth for e in exported), len(exported), exported)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seeds', type=int, default=10)
    parser.add_argument('--steps', type=int, default=100)
    parser.add_argument('--warmup', type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f'{NNI_NAME}, torch {torch.__version__}: {args.seeds} seeds, {args.warmup} warm-up and {args.steps} search '
          'steps from uniform alphas')
    print('| method | kernel size (true 5 of 1/3/5) | dilation (true 2 of 1/2/3) |')
    print('|---|---|---|')
    result = rates(args.seeds, args.steps, args.warmup)
    for method, name in (('proxyless', 'proxyless_rs (ProxylessNAS)'), ('darts', f"{NNI_NAME}'s DARTS")):
        cells = []
        for task in TASKS:
            found, total, exported = result[method, task]
            refused = [e for e in exported if isinstance(e, str)]
            cells.append(f'refused ({refused[0][9:]})' if refused else f'{found}/{total}')
        print(f'| {name} | {cells[0]} | {cells[1]} |')


if __name__ == '__main__':
    main()
