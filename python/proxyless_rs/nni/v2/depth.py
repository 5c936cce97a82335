"""proxyless_rs's depth expressions for NNI 2.10: :class:`proxyless_rs._depth.ProxylessDepth` as one of
NNI 2.10's supernet modules (a ``Repeat`` whose depth is an expression of one value choice, NNI's
``NDSStage`` included), with NNI 2.10's export forms."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from nni.common.hpo_utils import ParameterSpec
from nni.nas.nn.pytorch import Repeat
from nni.nas.nn.pytorch.choice import ValueChoice, ValueChoiceX
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from ..._depth import ProxylessDepth

__all__ = ['ProxylessMixedDepth', 'nni_depth_hook']


class ProxylessMixedDepth(ProxylessDepth, BaseSuperNetModule):
    """A ``Repeat`` whose depth is an expression of one value choice, searched by ProxylessNAS (see
    :mod:`proxyless_rs._depth`): NNI's NDS stages with ``num_cells`` a tuple, and any ``Repeat`` whose
    depth is, say, ``ValueChoice([1, 2], label='d') * 2``. A plain value choice as the depth of a plain
    ``Repeat`` is :class:`proxyless_rs.ProxylessMixedRepeat`'s (the skip-or-block chain)."""

    def __init__(self, blocks: list[nn.Module], depth: ValueChoiceX, first_cell_transformation: nn.Module | None,
                 memo: dict[str, Any], mutate_kwargs: dict[str, Any], name: str):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        leaves = list(depth.inner_choices())
        labels = sorted({leaf.label for leaf in leaves})
        if len(labels) != 1:
            raise ValueError(f'Repeat {name!r}: a depth searched by ProxylessNAS must be an expression of one '
                             f'value choice, got {depth!r} (of {labels})')
        values = list(leaves[0].candidates)
        self._init_depth(labels[0], values, lambda value: depth.evaluate([value] * len(leaves)),
                         first_cell_transformation, memo, mutate_kwargs, name)

    def search_space_spec(self) -> dict[str, ParameterSpec]:
        choice = self._choice
        return {choice.label: ParameterSpec(choice.label, 'choice', choice.names, (choice.label,), True,
                                            size=len(choice.names))}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        """``{'label/value': probability}`` unless the memo names the label (NNI 2.10's form)."""
        choice = self._choice
        if any(key.startswith(choice.label + '/') for key in memo):
            return {}
        probs = choice.probabilities().detach().cpu().tolist()
        return {f'{choice.label}/{value}': p for value, p in zip(choice.names, probs)}

    def parameters(self, *args: Any, arch: bool | None = None, **kwargs: Any):  # noqa: ANN201
        """NNI 2.10's ``parameters(arch=...)``: the alpha, or all but it (``arch=None``: every one)."""
        for name, p in self.named_parameters(*args, **kwargs):
            if arch is None or name.startswith('_arch_alpha.') == arch:
                yield p

    @classmethod
    def mutate(cls, module, name, memo, mutate_kwargs):  # noqa: ANN001, ANN206 (NNI's hook signature)
        if not isinstance(module, Repeat) or not isinstance(module.depth_choice, ValueChoiceX):
            return None
        if isinstance(module.depth_choice, ValueChoice) and not hasattr(module, 'first_cell_transformation_factory'):
            return None  # a plain choice: the skip-or-block chain's (``ProxylessMixedRepeat``)
        factory = getattr(module, 'first_cell_transformation_factory', None)
        return cls(list(module.blocks), module.depth_choice, factory() if factory is not None else None, memo,
                   mutate_kwargs, name)


def nni_depth_hook(hook: Any) -> Any:
    """``hook``, or ours where it is NNI's own for a depth (its hub's ``NDSStageDifferentiable.mutate``
    and ``NDSStagePathSampling.mutate``, which NNI's docs pair with its DARTS-like and path-sampling
    strategies): those weigh every depth or draw one at random, neither ProxylessNAS."""
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedRepeat
    from nni.nas.oneshot.pytorch.supermodule.sampling import PathSamplingRepeat

    owner = getattr(hook, '__self__', None)
    if isinstance(owner, type) and issubclass(owner, (DifferentiableMixedRepeat, PathSamplingRepeat)):
        return ProxylessMixedDepth.mutate
    return hook
