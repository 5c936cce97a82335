"""Searches with a known right answer for value choices and cells: does a short search from uniform
alphas export the choices that generated the data?

- ``kernel``: the targets are a random convolution with kernel size 5 applied to random images; the
  space is one convolution whose kernel size is a choice of 1, 3 or 5 (padding ``ks // 2``);
- ``dilation``: the targets are a random 3x3 convolution with dilation 2; the space's convolution
  takes dilation 1, 2 or 3 (padding = dilation): not nested, so a bias towards the largest value
  cannot pass;
- ``cell``: the targets are a random 5x5 convolution of the first of two random images; the space is
  NNI's ``Cell`` of one node on the two images, whose op is a 1x1, 3x3 or 5x5 convolution (built per
  input: a reduction-cell-like graph, searched as one unit) and whose input is either image: the
  answer is op ``conv5`` on input 0.

Each search trains the weights alone for ``--warmup`` steps, then alternates NNI's two steps (an
architecture step on a validation batch, a weight step on a training batch) for ``--steps`` steps,
and exports the most probable choices. ``proxyless`` is proxyless_rs's strategy's supernet (its
mutation hooks); ``darts`` NNI's own DARTS supernet of the same space (its
``MixedOpDifferentiablePolicy``: the softmax-weighted superkernel; its ``DifferentiableMixedCell``),
which refuses a mutable dilation. Prints how many seeds export the true choices, per method and task.

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
from value_spaces import Base, Cell, Conv2d, choice, resample, space, supernet  # noqa: E402

warnings.filterwarnings('ignore', category=UserWarning)

CHANNELS, SIZE, BATCH = 4, 10, 16
# Each task: its choices' values by label, and the true architecture.
TASKS: dict[str, tuple[dict[str, list], dict[str, Any]]] = {
    'kernel': ({'ks': [1, 3, 5]}, {'ks': 5}),
    'dilation': ({'dilation': [1, 2, 3]}, {'dilation': 2}),
    'cell': ({'cell/op_2_0': ['conv1', 'conv3', 'conv5'], 'cell/input_2_0': [0, 1]},
             {'cell/op_2_0': 'conv5', 'cell/input_2_0': 0}),
}


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


def _conv(ks: int):
    def make(node: int, op: int, input_index: int | None) -> nn.Module:  # built per input: one unit
        return nn.Conv2d(CHANNELS, CHANNELS, ks, padding=ks // 2, bias=False)
    return make


@space
class CellStudent(Base):
    """NNI's cell of one node on two images (stacked on dimension 1 of the input)."""

    def __init__(self):
        super().__init__()
        self.cell = Cell({f'conv{ks}': _conv(ks) for ks in (1, 3, 5)}, 1, 1, 2, label='cell')

    def forward(self, x):
        return self.cell([x[:, 0], x[:, 1]])


def teacher(task: str, seed: int) -> nn.Module:
    torch.manual_seed(1000 + seed)
    if task in ('kernel', 'cell'):
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
        if task == 'cell':  # the teacher reads the first image; the second is noise
            x = torch.randn(BATCH, 2, CHANNELS, SIZE, SIZE, generator=generator)
            out.append((x, net(x[:, 0])))
        else:
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
    """The architecture a search exports (``{label: value}``), or the error NNI's method refuses the
    space with."""
    values, _ = TASKS[task]
    student = {'kernel': KernelStudent, 'dilation': DilationStudent, 'cell': CellStudent}[task]
    torch.manual_seed(seed)
    model = student()
    try:
        model = supernet(model, seed=seed) if method == 'proxyless' else darts_supernet(model)
    except Exception as err:  # noqa: BLE001 (reported: NNI's refusal)
        return f'refused: {type(err).__name__}'
    # NNI's DARTS cell has an alpha per edge (its ops and 'none'), ours one per slot's op and input.
    alphas = {name.split('_arch_alpha.', 1)[1]: p for name, p in model.named_parameters() if '_arch_alpha.' in name}
    with torch.no_grad():
        for alpha in alphas.values():
            alpha.zero_()  # uniform
    weights = [p for name, p in model.named_parameters() if '_arch_alpha' not in name]
    weight_optim = torch.optim.Adam(weights, lr=0.02)
    arch_optim = torch.optim.Adam(list(alphas.values()), lr=0.05, betas=(0.5, 0.999))
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
    if task == 'cell':  # the cell's own export (NNI's DARTS: the strongest edges' strongest ops)
        (cell,) = [m for m in model.modules() if type(m).__name__.endswith('Cell')]
        exported = cell.export({})
        return {label: value[0] if isinstance(value, list) else value for label, value in exported.items()}
    return {label: values[label][int(torch.argmax(alpha.detach()))] for label, alpha in alphas.items()}


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
        for task, (_, truth) in TASKS.items():
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
    print('| method | kernel size (true 5 of 1/3/5) | dilation (true 2 of 1/2/3) | cell (true conv5 on input 0 '
          'of 3 ops x 2 inputs) |')
    print('|---|---|---|---|')
    result = rates(args.seeds, args.steps, args.warmup)
    for method, name in (('proxyless', 'proxyless_rs (ProxylessNAS)'), ('darts', f"{NNI_NAME}'s DARTS")):
        cells = []
        for task in TASKS:
            found, total, exported = result[method, task]
            refused = [e for e in exported if isinstance(e, str)]
            cells.append(f'refused ({refused[0][9:]})' if refused else f'{found}/{total}')
        print(f'| {name} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
