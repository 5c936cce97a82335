"""ProxylessNAS mixed layers backed by the Rust core.

Drop-ins for ``nni.nas.oneshot.pytorch.supermodule.proxyless.ProxylessMixedLayer`` and
``ProxylessMixedInput`` of NNI 2.10: this module keeps NNI's surface (constructors,
attributes, ``forward_path``, ``resample``, parameter names, state_dict keys) and hands the
saved-forward stack, the backward hook, the alpha-gradient kernel and the multinomial draw
to ``proxyless_rs._core``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedInput, DifferentiableMixedLayer

from ._core import ProxylessContext

__all__ = ['ProxylessMixedLayer', 'ProxylessMixedInput', 'no_arch_grad']


@contextlib.contextmanager
def no_arch_grad(*modules: nn.Module) -> Iterator[None]:
    """Within this block, the ProxylessNAS layers inside ``modules`` skip their alpha-gradient work.

    Forwards save nothing and attach no hook, so backward neither evaluates the unsampled
    candidates nor touches ``alpha.grad``: use it around a weight step whose alpha gradients
    would be thrown away. Weight gradients are unchanged. What else differs from a full step:
    the unsampled candidates' forwards in backward no longer run, so they neither update their
    BatchNorm running statistics nor draw random numbers (dropout), and later draws shift.
    """
    contexts = [m.ctx for root in modules for m in root.modules() if isinstance(getattr(m, 'ctx', None), ProxylessContext)]
    previous = [ctx.enabled for ctx in contexts]
    for ctx in contexts:
        ctx.enabled = False
    try:
        yield
    finally:
        for ctx, enabled in zip(contexts, previous):
            ctx.enabled = enabled


class ProxylessMixedLayer(DifferentiableMixedLayer):
    """A layer choice that runs one sampled candidate per step (ProxylessNAS).

    ``forward`` runs only the sampled path. In backward, a gradient hook on the layer's output
    evaluates every other candidate on the saved inputs and gives ``_arch_alpha`` the binary-gate
    gradient ``p_i (b_i - sum_j b_j p_j)`` with ``b_k = <out_k, grad_output>``, accumulated into
    ``_arch_alpha.grad`` so that other losses on alpha add up. (NNI registers a module full
    backward hook for this, which costs ~80 us per call; the output hook costs a few, and the
    output tensors returned are views of the candidate's.)

    Limits, as in NNI 2.10: candidates must return a tensor or a tuple (or list) of tensors, all
    candidates the same structure; a layer called several times in one forward is assumed to be
    back-propagated in reverse call order. Unlike NNI 2.10, forward under ``torch.no_grad()``
    saves nothing, and a bad memo or output fails with a message naming the label.

    Parameters
    ----------
    paths : list[tuple[str, nn.Module]]
        Candidates, as ``(name, module)`` pairs.
    alpha : Tensor
        Architecture logits, one per candidate (may be shared between layers with one label).
    softmax : nn.Module
        Turns ``alpha`` into probabilities, e.g. ``nn.Softmax(-1)`` or NNI's ``GumbelSoftmax``.
    label : str
        Name of the choice.
    """

    _arch_parameter_names = ['_arch_alpha']

    def __init__(self, paths: list[tuple[str, nn.Module]], alpha: torch.Tensor, softmax: nn.Module, label: str):
        if len(alpha) != len(paths):
            raise ValueError(f'{type(self).__name__} {label!r}: alpha has {len(alpha)} entries, '
                             f'but there are {len(paths)} candidates ({", ".join(name for name, _ in paths)}).')
        super().__init__(paths, alpha, softmax, label)
        self._sampled: str | None = None
        self._sample_idx: int | None = None

        # alpha may be shared by several layers; the saved forwards are this layer's own.
        self.ctx = ProxylessContext(alpha, softmax, label)

    def forward(self, *args, **kwargs):
        """Forward pass of the sampled path only."""
        if self._sample_idx is None:
            raise RuntimeError(f'{type(self).__name__} {self.label!r}: resample() needs to be called before forward.')
        output = self.forward_path(self._sample_idx, *args, **kwargs)
        return self.ctx.forward_output(self, (args, kwargs), output, self._sample_idx)

    def forward_path(self, index: int, *args, **kwargs):
        """Output of candidate ``index``."""
        return getattr(self, self.op_names[index])(*args, **kwargs)

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Take the path from ``memo`` if it names this label, else draw one from ``softmax(alpha)``."""
        if self.label in memo:
            self._sampled = memo[self.label]
            if self._sampled not in self.op_names:
                raise ValueError(f'{type(self).__name__} {self.label!r}: memo chose {self._sampled!r}, '
                                 f'which is not one of its candidates {self.op_names}.')
            self._sample_idx = self.op_names.index(self._sampled)
        else:
            self._sample_idx = self.ctx.sample()
            self._sampled = self.op_names[self._sample_idx]

        self.ctx.clear_context()

        return {self.label: self._sampled}


class ProxylessMixedInput(DifferentiableMixedInput):
    """An input choice that passes one sampled input per step (ProxylessNAS).

    See :class:`ProxylessMixedLayer`; here candidate ``k`` is ``inputs[k]``. Only one input is
    chosen per step (``n_chosen`` is used by ``export``, as in NNI 2.10).

    Parameters
    ----------
    n_candidates : int
        Number of inputs to choose from.
    n_chosen : int or None
        Number of inputs to keep at export.
    alpha : Tensor
        Architecture logits, one per candidate.
    softmax : nn.Module
        Turns ``alpha`` into probabilities.
    label : str
        Name of the choice.
    """

    _arch_parameter_names = ['_arch_alpha', '_binary_gates']

    def __init__(self, n_candidates: int, n_chosen: int | None, alpha: torch.Tensor, softmax: nn.Module, label: str):
        if len(alpha) != n_candidates:
            raise ValueError(f'{type(self).__name__} {label!r}: alpha has {len(alpha)} entries, '
                             f'but there are {n_candidates} candidates.')
        super().__init__(n_candidates, n_chosen, alpha, softmax, label)
        self._sampled: int | None = None

        self.ctx = ProxylessContext(alpha, softmax, label)

    def forward(self, inputs: Sequence[Any]):
        """Return the sampled input."""
        if self._sampled is None:
            raise RuntimeError(f'{type(self).__name__} {self.label!r}: resample() needs to be called before forward.')
        if len(inputs) != self.n_candidates:
            raise ValueError(f'{type(self).__name__} {self.label!r}: expected {self.n_candidates} inputs, '
                             f'got {len(inputs)}.')
        output = self.forward_path(self._sampled, inputs)
        return self.ctx.forward_output(self, ((inputs,), {}), output, self._sampled)

    def forward_path(self, index: int, inputs: Sequence[Any]):
        """Input ``index``."""
        return inputs[index]

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Take the index from ``memo`` if it names this label, else draw one from ``softmax(alpha)``."""
        if self.label in memo:
            chosen = memo[self.label]
            if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < self.n_candidates:
                raise ValueError(f'{type(self).__name__} {self.label!r}: memo chose {chosen!r}, but the choices '
                                 f'are the input indices {list(range(self.n_candidates))}.')
            self._sampled = chosen
        else:
            self._sampled = self.ctx.sample()

        self.ctx.clear_context()

        return {self.label: self._sampled}
