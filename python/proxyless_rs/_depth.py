"""ProxylessNAS on a depth that is an expression of one label, whichever NNI is installed (no NNI
import here: ``nni.v2.layers`` and ``nni.v3.layers`` put :class:`ProxylessDepth` in front of that
NNI's supernet module and read its expressions).

NNI's NDS spaces (DARTS, NASNet, ENAS, AmoebaNet, PNAS with ``num_cells`` a tuple) give each of
their three stages a depth that is a function of one label: ``(i + 1) * depth // 3 - i * depth //
3``, so that ``depth`` 4 stacks 1, 1 and 2 cells. The skip-or-block chain of a plain depth choice
(:class:`proxyless_rs._layer.DepthChain`) cannot say that: the stages' depths move together. Here
the label is one choice (:class:`DepthChoice`), shared by every repeat that reads it:

- **one draw per label per step**: the first repeat of a label draws its value from ``softmax(alpha)``,
  the others find it in the memo; each runs its blocks to the depth the value gives it;
- **binary gates** on the core's contract: the alternatives of a repeat are its blocks run to the
  depth each other value gives, on the saved input (in backward, without a graph); each repeat adds
  its ``<dL/dy, y_k>`` to the label's alpha, as a value choice read by several operations does;
- **NNI's shape alignment**: where a value stacks a single block and the repeat has a
  ``first_cell_transformation`` (NNI's ``NDSStage``: a stage's first cell passes on the stage's own
  input, with another shape than a later cell's), that input goes through the transformation, as
  NNI's ``NDSStagePathSampling`` and ``NDSStageDifferentiable`` do, so that every value gives the
  same shapes.

Why not NNI 3.0's way for ProxylessNAS (``NDSStageDifferentiable``, which NNI's hub installs for every
DARTS-like strategy): it runs every depth and weighs their outputs by the softmax, DARTS's
continuous relaxation; ProxylessNAS runs one.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch.nn as nn

from ._layer import label_alpha
from ._site import ChoiceSite, SiteHolder

__all__ = ['ProxylessDepth', 'DepthChoice']


class DepthChoice(ChoiceSite):
    """The label of a :class:`ProxylessDepth` (its alternatives: the label's values).

    Hardware costs: value ``k`` is counted as the repeat run to its depth, its cells at their
    first alternatives; its row is what that adds over the shallowest depth (first order: a cell's
    own choices count in their rows wherever the cell sits)."""

    noun = 'value'

    def forward_candidate(self, k: int, *args: Any, **kwargs: Any) -> Any:
        return self.module.run_to_depth(k, *args)

    def candidate_module(self, k: int) -> nn.Module | None:
        module = self.module
        depth = module.depths[k]
        aligned = [module.first_cell_transformation] if depth == 1 and module.first_cell_transformation else []
        return nn.ModuleList([*module.blocks[:depth], *aligned])


class ProxylessDepth(SiteHolder):
    """A repeat whose depth is ``depth_of(value)`` for the value of one label (see the module doc): a
    mixin in front of the NNI version's supernet module. ``blocks`` hold every block up to the
    largest depth; ``first_cell_transformation`` (or ``None``) aligns a one-block depth's output."""

    blocks: nn.ModuleList
    first_cell_transformation: nn.Module | None
    _arch_alpha: nn.ParameterDict

    def _init_depth(self, label: str, values: Sequence[Any], depth_of: Callable[[Any], int],
                    first_cell_transformation: nn.Module | None, memo: dict[str, Any],
                    mutate_kwargs: dict[str, Any], name: str) -> None:
        self.depths = [int(depth_of(v)) for v in values]
        if any(d < 0 or d > len(self.blocks) for d in self.depths):
            raise ValueError(f'{name}: the depth choice {label!r} gives depths {self.depths} for its values '
                             f'{list(values)}; the repeat has {len(self.blocks)} blocks')
        self.first_cell_transformation = first_cell_transformation
        softmax = mutate_kwargs.get('softmax', nn.Softmax(-1))
        mode = mutate_kwargs.get('proxyless_mode', 'full')
        alpha = label_alpha(memo, label, len(values), f'{name}: depth choice {label!r} has {len(values)} values '
                                                      f'{list(values)}')
        self._arch_alpha = nn.ParameterDict({label: alpha})
        self._softmax = softmax
        self._choice = DepthChoice(self, label, list(values), alpha, softmax, mode,
                                   f'{type(self).__name__} {name!r}' if name else type(self).__name__)

    @property
    def depth_label(self) -> str:
        return self._choice.label

    def choice_sites(self) -> list[DepthChoice]:
        return [self._choice]

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self._arch_alpha.values())

    def depth_at(self, value: Any) -> int:
        """The number of blocks this repeat stacks for the label's ``value``."""
        return self.depths[self._choice.index_of(value)]

    # NNI's supernet-module interface --------------------------------------------------------------------

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        """The label's value from ``memo`` if it names it, else drawn from ``softmax(alpha)``."""
        choice = self._choice
        if choice.label in memo:
            choice.index = choice.ctx.resample(choice.index_of(memo[choice.label]))
        else:
            choice.index = choice.ctx.resample()
        return {choice.label: choice.names[choice.index]}

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        """The label's most probable value (the first of equals), unless the memo names it."""
        choice = self._choice
        if choice.label in memo:
            return {}
        return {choice.label: choice.names[choice.most_probable()]}

    def run_to_depth(self, k: int, x: Any) -> Any:
        """The repeat as value ``k`` of the label builds it, on ``x``: what the core calls for each
        alternative."""
        depth = self.depths[k]
        for block in self.blocks[:depth]:
            x = block(x)
        if depth == 1 and self.first_cell_transformation is not None:
            # NNI's NDS stages: the first cell passes on the stage's input as its "previous" state.
            x = (self.first_cell_transformation(x[0]), *x[1:])
        return x

    def forward(self, x: Any) -> Any:
        choice = self._choice
        if choice.index is None:
            raise RuntimeError(f'{choice._name()}: resample() needs to be called before forward.')
        return choice.ctx.forward(self.run_to_depth, (x,), None, choice.index, choice._alpha_now())

