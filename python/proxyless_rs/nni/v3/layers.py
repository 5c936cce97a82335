"""proxyless_rs's mixed layers for NNI 3.0: subclasses of its ``DifferentiableMixedLayer`` /
``DifferentiableMixedInput`` (and ``Repeat``) with the surface of NNI 3.0's ``ProxylessMixedLayer``,
``ProxylessMixedInput`` and ``ProxylessMixedRepeat`` (``paths`` a dict, ``names``, an input choice's
``_sampled`` a list of indices, ``forward_path(index, *inputs)``).

Beyond NNI 3.0, as under NNI 2.10: keyword arguments, non-tensor outputs, two-path mode. Where NNI 3.0
is weak: its layers export a random draw (``export`` is ``resample``), and its depth choice exports by
sampling up to 1000 times; here ``export`` is the most probable choice, and the depth the most probable
depth computed exactly. Its ``check_contains`` discards its blocks' errors; here they are returned.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, cast

import torch
import torch.nn as nn
from nni.mutable import Categorical, Sample, SampleValidationError, auto_label, frozen, label_scope
from nni.nas.nn.pytorch import Repeat, recursive_freeze
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedInput, DifferentiableMixedLayer

from ..._layer import DepthChain, ProxylessLayer, ProxylessLayerChoice, check_alpha_length, chosen_inputs

__all__ = ['ProxylessMixedLayer', 'ProxylessMixedInput', 'ProxylessMixedRepeat', 'suppress_already_mutated']

# What proxyless_rs.patch_nni() rebinds: NNI 3.0's supermodule, which its strategy imports its
# Proxyless classes from (by name at call time).
NNI_PROXYLESS_MODULES = ('nni.nas.oneshot.pytorch.supermodule.proxyless',)
NNI_PROXYLESS_CLASSES = ('ProxylessMixedLayer', 'ProxylessMixedInput', 'ProxylessMixedRepeat')


def _as_dict(paths: Any) -> Any:
    """NNI 2.10's list of ``(name, module)`` pairs as NNI 3.0's dict; anything else as it is."""
    if isinstance(paths, (list, tuple)) and paths and all(
            isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in paths):
        return dict(paths)
    return paths


@contextlib.contextmanager
def _outside_a_model_space() -> Iterator[None]:
    """NNI 3.0's choices read the frozen context of the ``ModelSpace`` being built, and refuse to be
    built without one (``ensure_frozen``'s strict mode); a supernet built of these layers in a plain
    script has none: there the choice takes its default, as NNI's non-strict mode gives it."""
    if frozen.frozen_context.current() is not None:
        yield
        return
    strict = frozen._ENSURE_FROZEN_STRICT
    frozen._ENSURE_FROZEN_STRICT = False
    try:
        yield
    finally:
        frozen._ENSURE_FROZEN_STRICT = strict


class ProxylessMixedLayer(ProxylessLayerChoice, DifferentiableMixedLayer):
    """A layer choice that runs one sampled candidate per step (ProxylessNAS), for NNI 3.0.

    Drop-in for ``nni.nas.oneshot.pytorch.supermodule.proxyless.ProxylessMixedLayer`` of NNI 3.0;
    see proxyless_rs's NNI 2.10 class for how the backward works and its limits. ``export`` gives the
    most probable candidate (NNI 3.0's draws one at random).

    Parameters
    ----------
    paths : dict[str, nn.Module] or list[nn.Module]
        Candidates (a list of ``(name, module)`` pairs, NNI 2.10's form, is taken too).
    alpha : Tensor
        Architecture logits, one per candidate (may be shared between layers with one label).
    softmax : nn.Module
        Turns ``alpha`` into probabilities.
    label : str
        Name of the choice.
    mode : str
        ``'full'`` (default) or ``'two'``.
    """

    _arch_parameter_names = ['_arch_alpha']

    def __init__(self, paths: dict[str, nn.Module] | list[nn.Module], alpha: torch.Tensor, softmax: nn.Module,
                 label: str, mode: str = 'full'):
        paths = _as_dict(paths)
        names = list(paths) if isinstance(paths, dict) else list(range(len(paths)))
        check_alpha_length(type(self), label, alpha, names)
        with _outside_a_model_space():
            super().__init__(paths, alpha, softmax, label)
        self._sampled: str | int | None = None
        self._sample_idx: int | None = None
        self._init_context(alpha, softmax, mode, list(self.names))

    @property
    def op_names(self) -> list:
        """The candidates' names (NNI 2.10's name for NNI 3.0's ``names``)."""
        return list(self.names)

    def forward_path(self, index: int, *args, **kwargs):
        """Output of candidate ``index``."""
        return self._modules[str(self.names[index])](*args, **kwargs)

    # The core calls the candidate modules directly (the same lookup) while the class's forward_path
    # is this function: a subclass's or a patched forward_path is called as such (_alternatives).
    _plain_forward_path = forward_path



class ProxylessMixedInput(ProxylessLayer, DifferentiableMixedInput):
    """An input choice that passes one sampled input per step (ProxylessNAS), for NNI 3.0.

    Drop-in for NNI 3.0's ``ProxylessMixedInput``: ``_sampled`` is a list of ``n_chosen`` indices drawn
    without replacement, of which the first is passed on; ``forward_path(index, *inputs)``. ``export``
    gives the ``n_chosen`` most probable inputs (NNI 3.0's draws them at random).
    """

    _arch_parameter_names = ['_arch_alpha', '_binary_gates']

    def __init__(self, n_candidates: int, n_chosen: int | None, alpha: torch.Tensor, softmax: nn.Module, label: str,
                 mode: str = 'full'):
        check_alpha_length(type(self), label, alpha, list(range(n_candidates)))
        with _outside_a_model_space():
            super().__init__(n_candidates, n_chosen, alpha, softmax, label)
        self._sampled: list[int] | None = None
        self._init_context(alpha, softmax, mode, noun='input')

    @property
    def active_index(self) -> int | None:
        """The index of the input the next forwards pass on (None before the first ``resample``)."""
        return None if self._sampled is None else self._sampled[0]

    def forward(self, inputs):
        """Return the (first) sampled input."""
        if self._sampled is not None and len(inputs) != self.n_candidates:
            raise ValueError(f'{self._name()}: expected {self.n_candidates} inputs, got {len(inputs)}.')
        return self._forward_call(tuple(inputs), {}, None if self._sampled is None else self._sampled[0])

    def forward_path(self, index: int, *inputs):
        """Input ``index``."""
        return inputs[index]

    def forward_candidate(self, index: int, inputs, **kwargs):
        """Input ``index`` of the list a call of the layer takes."""
        return inputs[index]

    @staticmethod
    def exported_input(index: int) -> list[int]:
        """One chosen input as NNI 3.0's ``export`` gives it: a one-element list."""
        return [index]

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Take the indices from ``memo`` if it names this label, else draw ``n_chosen`` from ``softmax(alpha)``."""
        if self.label in memo:
            chosen = chosen_inputs(self._name(), memo[self.label], self.n_candidates, 'memo chose')
            self.ctx.resample(chosen[0])
            self._sampled = list(chosen)
        elif (self.n_chosen or 1) == 1:
            self._sampled = [self.ctx.resample()]
        else:
            # Several inputs without replacement, as NNI 3.0 draws them; the first is passed on.
            with torch.no_grad():
                drawn = torch.multinomial(self.probabilities(), self.n_chosen).cpu().tolist()
            self.ctx.resample(drawn[0])
            self._sampled = drawn
        return {self.label: self._sampled}


def suppress_already_mutated(module, name, memo, mutate_kwargs) -> bool | None:
    """The first mutation hook: the layers a depth choice builds are not mutated again."""
    if isinstance(module, (ProxylessLayer, ProxylessMixedRepeat)):
        return True
    return None


class ProxylessMixedRepeat(DepthChain, Repeat, BaseSuperNetModule):
    """A depth choice (``Repeat`` with a categorical depth) as a chain of skip-or-block choices.

    Drop-in for NNI 3.0's ``ProxylessMixedRepeat``: block ``i`` beyond ``min_depth`` becomes a
    :class:`ProxylessMixedLayer` labelled ``<depth label>/in_repeat_<i>`` between ``'0'`` (identity) and
    ``'1'`` (the block); the sampled depth is ``min_depth`` plus the number of blocks chosen.

    Why a chain of independent choices: each gets its binary-gate gradient from one extra forward. The
    depth's distribution is then the distribution of a sum of independent Bernoulli variables, which
    :func:`depth_distribution` computes in closed form (O(n^2), differentiable): ``export`` returns the
    most probable depth among the depth choice's values exactly, where NNI 3.0 samples up to 1000 times.
    """

    depth_choice: Categorical[int]

    def __init__(self, blocks: list[nn.Module], depth: Categorical[int]):
        super().__init__(blocks, depth)
        if not isinstance(depth, Categorical):
            raise TypeError(f'{type(self).__name__}: the depth must be a categorical choice, got {depth!r}')
        self._check_chain(f'{type(self).__name__} {self.depth_choice.label!r}')

    @property
    def depth_label(self) -> str:
        return self.depth_choice.label

    @property
    def depth_values(self) -> list[int]:
        return list(self.depth_choice.values)

    def export_probs(self, memo):
        """The probability of each depth (as NNI 3.0 reports it: every depth from min to max)."""
        if self.depth_choice.label in memo:
            return {}
        return {self.depth_choice.label: self._depth_probs_by_depth()}

    def check_contains(self, sample: Sample) -> SampleValidationError | None:
        exception = self.depth_choice.check_contains(sample)
        if exception is not None:
            return exception
        depth = self.depth_choice.freeze(sample)
        for i in range(min(depth, len(self.blocks))):
            exception = self._check_any_module_contains(self._block(i), sample, str(i))
            if exception is not None:
                return exception
        return None

    def freeze(self, sample: Sample) -> nn.Sequential:
        self.validate(sample)
        depth = self.depth_choice.freeze(sample)
        blocks = range(min(depth, len(self.blocks)))
        return nn.Sequential(*[recursive_freeze(self._block(i), sample)[0] for i in blocks])

    @classmethod
    def mutate(cls, module, name, memo, mutate_kwargs):
        # An expression, or NNI's NDS stage: ``ProxylessMixedDepth``'s.
        if type(module) is Repeat and isinstance(module.depth_choice, Categorical):  # noqa: E721 (exactly Repeat)
            module = cast(Repeat, module)
            softmax = mutate_kwargs.get('softmax', nn.Softmax(-1))
            mode = mutate_kwargs.get('proxyless_mode', 'full')
            with label_scope(module.depth_choice.label):
                # Candidate names are strings: a layer choice's dict keys must be.
                blocks = cls._skip_or_block_chain(
                    module.blocks, module.min_depth, lambda i: auto_label(f'in_repeat_{i}'), memo,
                    lambda label, block, alpha: ProxylessMixedLayer({'0': nn.Identity(), '1': block}, alpha, softmax,
                                                                    label, mode))
            return cls(blocks, module.depth_choice)
        return None
