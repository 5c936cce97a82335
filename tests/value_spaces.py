"""Value-choice model spaces written once for both NNI versions, and the supernet our strategy
builds from them (its own mutation hooks and keyword arguments), for tests/test_value_choices.py
and the known-answer tasks of benchmarks/value_choices.py."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as torch_nn

from proxyless_rs.nni.version import NNI3

if NNI3:
    import nni
    from nni.nas.nn.pytorch import (
        Cell,
        ModelSpace,
        MutableBatchNorm2d as BatchNorm2d,
        MutableConv2d as Conv2d,
        MutableLayerNorm as LayerNorm,
        MutableLinear as Linear,
        MutableMultiheadAttention as MultiheadAttention,
        Repeat,
    )

    def choice(label: str, values: list) -> Any:
        return nni.choice(label, values)

    def space(cls: type) -> type:
        return cls

    Base = ModelSpace
else:
    import nni.retiarii.nn.pytorch as retiarii_nn
    from nni.retiarii import model_wrapper

    Cell = retiarii_nn.Cell
    Conv2d = retiarii_nn.Conv2d
    BatchNorm2d = retiarii_nn.BatchNorm2d
    Linear = retiarii_nn.Linear
    LayerNorm = retiarii_nn.LayerNorm
    MultiheadAttention = retiarii_nn.MultiheadAttention
    Repeat = retiarii_nn.Repeat

    def choice(label: str, values: list) -> Any:
        return retiarii_nn.ValueChoice(values, label=label)

    def space(cls: type) -> type:
        return model_wrapper(cls)

    Base = torch_nn.Module

__all__ = ['Cell', 'Conv2d', 'BatchNorm2d', 'Linear', 'LayerNorm', 'MultiheadAttention', 'Repeat', 'choice', 'space',
           'Base', 'cell_space',
           'supernet', 'mixed_operations', 'resample']


def supernet(model: torch_nn.Module, mode: str = 'full', seed: int = 0) -> torch_nn.Module:
    """``model`` mutated in place by proxyless_rs's strategy's own hooks, as its search builds it
    (alphas of ``randn * 1e-3`` under ``seed``, as NNI's strategies create them)."""
    torch.manual_seed(seed)
    if NNI3:
        from proxyless_rs.strategy import Proxyless

        return Proxyless(mode=mode).mutate_model(model)
    from nni.nas.oneshot.pytorch.base_lightning import traverse_and_mutate_submodules

    from proxyless_rs.nni.v2.lightning import ProxylessLightningModule
    from proxyless_rs.nni.v2.mixed import MixedOpProxylessPolicy

    hooks = ProxylessLightningModule.default_mutation_hooks(None)  # type: ignore[arg-type]
    kwargs = {'mixed_op_sampling': MixedOpProxylessPolicy, 'softmax': torch_nn.Softmax(-1), 'proxyless_mode': mode}
    traverse_and_mutate_submodules(model, hooks, kwargs, topdown=True)
    return model


def mixed_operations(model: torch_nn.Module) -> list[torch_nn.Module]:
    """The searched modules of ``model`` in module order (what the one-shot module resamples): layers,
    mixed operations, cells."""
    from proxyless_rs._choices import choices

    seen: dict[int, torch_nn.Module] = {}
    for c in choices(model):
        owner = getattr(c, 'module', c)
        seen.setdefault(id(owner), owner)
    return list(seen.values())


def resample(model: torch_nn.Module, memo: dict | None = None) -> dict:
    """NNI's one-shot loop: every searched module resamples in order, handed the memo so far."""
    memo = dict(memo or {})
    for module in mixed_operations(model):
        memo.update(module.resample(memo))
    return memo


class SumHalves(torch_nn.Module):
    """A cell's postprocessor: its two nodes' concatenated outputs summed back to one width."""

    def forward(self, this_cell: torch.Tensor, inputs: Any) -> torch.Tensor:
        first, second = this_cell.chunk(2, dim=-1)
        return first + second


def _cell_op(kind: str) -> Any:
    def make(node: int, op: int, input_index: int | None) -> torch_nn.Module:  # built per input: one unit
        return {'linear': lambda: torch_nn.Linear(16, 16), 'tanh': torch_nn.Tanh, 'skip': torch_nn.Identity}[kind]()
    return make


def cell_space() -> torch_nn.Module:
    """Digits (64 features) through one or two cells of two nodes (a depth expression, ``'depth'``),
    every slot's op (``linear``, ``tanh``, ``skip``) and input searched, the cells sharing their labels
    (``cell/op_<node>_0``, ``cell/input_<node>_0``)."""
    ops = {kind: _cell_op(kind) for kind in ('linear', 'tanh', 'skip')}

    @space
    class Cells(Base):
        def __init__(self):
            super().__init__()
            self.stem = torch_nn.Linear(64, 16)
            self.cells = Repeat(lambda i: Cell(ops, 2, 1, 1, postprocessor=SumHalves(), label='cell'),
                                choice('depth', [1, 2]) * 1)
            self.head = torch_nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.cells(torch.tanh(self.stem(x))))

    return Cells()
