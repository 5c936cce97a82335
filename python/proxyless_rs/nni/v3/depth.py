"""proxyless_rs's depth expressions for NNI 3.0: :class:`proxyless_rs._depth.ProxylessDepth` in front of
NNI 3.0's ``Repeat`` (a ``Repeat`` whose depth is an expression of one label, NNI's ``NDSStage``
included), with NNI 3.0's export forms."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from nni.mutable import Categorical, Mutable, MutableExpression
from nni.nas.nn.pytorch import Repeat
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from ..._depth import ProxylessDepth
from .layers import ProxylessMixedRepeat

__all__ = ['ProxylessMixedDepth', 'nni_depth_hook']


class ProxylessMixedDepth(ProxylessDepth, Repeat, BaseSuperNetModule):
    """A ``Repeat`` whose depth is an expression of one label, searched by ProxylessNAS (see
    :mod:`proxyless_rs._depth`): NNI's NDS stages with ``num_cells`` a tuple, and any ``Repeat`` whose
    depth is, say, ``nni.choice('d', [1, 2]) * 2``. A plain categorical depth of a plain ``Repeat`` is
    :class:`proxyless_rs.ProxylessMixedRepeat`'s (NNI 3.0's skip-or-block chain)."""

    def __init__(self, blocks: list[nn.Module], depth: MutableExpression[int],
                 first_cell_transformation: nn.Module | None, memo: dict[str, Any],
                 mutate_kwargs: dict[str, Any], name: str):
        super().__init__(blocks, depth)
        labels = depth.simplify()
        if len(labels) != 1 or not all(isinstance(c, Categorical) for c in labels.values()):
            raise ValueError(f'Repeat {name!r}: a depth searched by ProxylessNAS must be an expression of one '
                             f'categorical choice, got {depth!r} (of {sorted(labels)})')
        ((label, choice),) = labels.items()
        self._init_depth(label, list(choice.values), lambda value: depth.freeze({label: value}),
                         first_cell_transformation, memo, mutate_kwargs, name)

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        """``{label: {value: probability}}`` unless the memo names the label (NNI 3.0's form)."""
        choice = self._choice
        if choice.label in memo:
            return {}
        return {choice.label: dict(zip(choice.names, choice.probabilities().detach().cpu().tolist()))}

    @classmethod
    def mutate(cls, module, name, memo, mutate_kwargs):  # noqa: ANN001, ANN206 (NNI's hook signature)
        if not isinstance(module, Repeat) or isinstance(module, (ProxylessMixedRepeat, ProxylessMixedDepth)):
            return None
        depth = module.depth_choice
        if not isinstance(depth, Mutable):
            return None
        if type(module) is Repeat and isinstance(depth, Categorical):  # noqa: E721 (exactly Repeat)
            return None  # a plain choice: the skip-or-block chain's (``ProxylessMixedRepeat``)
        factory = getattr(module, 'first_cell_transformation_factory', None)
        return cls(list(module.blocks), depth, factory() if factory is not None else None, memo, mutate_kwargs,
                   name)


def nni_depth_hook(hook: Any) -> Any:
    """``hook``, or ours where it is NNI's own for a depth (its hub's ``NDSStageDifferentiable.mutate``
    and ``NDSStagePathSampling.mutate``, which NNI 3.0's NDS spaces add for every DARTS-like or
    path-sampling strategy): those weigh every depth or draw one at random, neither ProxylessNAS."""
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedRepeat
    from nni.nas.oneshot.pytorch.supermodule.sampling import PathSamplingRepeat

    owner = getattr(hook, '__self__', None)
    if isinstance(owner, type) and issubclass(owner, (DifferentiableMixedRepeat, PathSamplingRepeat)):
        return ProxylessMixedDepth.mutate
    return hook
