"""ProxylessNAS mixed layers backed by the Rust core.

Drop-ins for ``nni.nas.oneshot.pytorch.supermodule.proxyless.ProxylessMixedLayer`` and
``ProxylessMixedInput`` of NNI 2.10: this module keeps NNI's surface (constructors,
attributes, ``forward_path``, ``resample``, parameter names, state_dict keys) and hands the
saved-forward stack, the backward hook, the alpha-gradient kernels and the multinomial draws
to ``proxyless_rs._core``.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedInput, DifferentiableMixedLayer
from torch.utils.weak import WeakIdKeyDictionary

from ._core import ProxylessContext, rescale_two_path as _rescale_pair

__all__ = ['ProxylessMixedLayer', 'ProxylessMixedInput', 'MODES', 'no_arch_grad', 'rescale_two_path']

MODES = ('full', 'two')
"""``'full'``: every candidate's binary gate gets a gradient (NNI's behaviour). ``'two'``: the
ProxylessNAS paper's two-path binarization (see :class:`ProxylessMixedLayer`)."""

# Two-path draws waiting for their rescale, per architecture parameter: layers that share a
# label share alpha, its draw and its one rescale. Weak keys by identity: nothing outlives the
# parameter, and tensors are not compared with ==.
_pending_two_path: WeakIdKeyDictionary = WeakIdKeyDictionary()


# Layers set up by proxyless_rs.distributed.setup, with their DistributedSearch (which agrees the
# draws across ranks). Weak keys: a layer copied or dropped leaves the registry.
_distributed_layers: 'weakref.WeakKeyDictionary[nn.Module, Any]' = weakref.WeakKeyDictionary()


def _proxyless_layers(*modules: nn.Module) -> Iterator[nn.Module]:
    for root in modules:
        for module in root.modules():
            if isinstance(module, (ProxylessMixedLayer, ProxylessMixedInput)):
                yield module


def _unique_alphas(layers: Iterable[nn.Module]) -> list[torch.Tensor]:
    """The layers' architecture parameters, each once (layers sharing a label share one), in order."""
    return list({id(layer._arch_alpha): layer._arch_alpha for layer in layers}.values())


@contextlib.contextmanager
def no_arch_grad(*modules: nn.Module) -> Iterator[None]:
    """Within this block, the ProxylessNAS layers inside ``modules`` skip their alpha-gradient work.

    Forwards save nothing and attach no hook, so backward neither evaluates the unsampled
    candidates nor touches ``alpha.grad``: use it around a weight step whose alpha gradients
    would be thrown away. Weight gradients are unchanged. What else differs from a full step:
    the unsampled candidates' forwards in backward no longer run, so they neither update their
    BatchNorm running statistics nor draw random numbers (dropout), and later draws shift.
    Other modules (NNI's own layers included) are left as they are.
    """
    contexts = [layer.ctx for layer in _proxyless_layers(*modules)]
    previous = [ctx.enabled for ctx in contexts]
    for ctx in contexts:
        ctx.enabled = False
    try:
        yield
    finally:
        for ctx, enabled in zip(contexts, previous):
            ctx.enabled = enabled


def rescale_two_path(*modules: nn.Module) -> None:
    """Call right after the architecture optimizer's step when layers run in two-path mode.

    For each architecture parameter sampled in two-path mode since the last call, shifts the two
    involved logits by one common offset so that their summed ``exp`` is what it was before the
    step (mit-han-lab's ``rescale_updated_arch_param``), and puts every other logit back to its
    value at the draw (an optimizer with momentum or weight decay moves them although their
    gradient was zero): the two candidates trade probability between themselves and every other
    candidate's probability is unchanged. Full-mode layers are left alone.
    :class:`proxyless_rs.strategy.Proxyless` calls it for you.
    """
    for alpha in _unique_alphas(_proxyless_layers(*modules)):
        pending = _pending_two_path.pop(alpha, None)
        if pending is not None:
            active, inactive, before = pending
            _rescale_pair(alpha, [active, inactive], before)


class _ProxylessSampling:
    """What the two mixed classes share: the mode and the draw of one or two paths."""

    _arch_alpha: torch.Tensor
    ctx: ProxylessContext
    label: str

    @classmethod
    def mutate(cls, module, name, memo, mutate_kwargs):
        """NNI's mutation hook; the mode comes from ``mutate_kwargs['proxyless_mode']`` (default full)."""
        layer = super().mutate(module, name, memo, mutate_kwargs)  # type: ignore[misc]
        if layer is not None:
            layer.mode = mutate_kwargs.get('proxyless_mode', 'full')
        return layer

    def _init_sampling(self, mode: str) -> None:
        self._partner: int | None = None
        self.mode = mode

    @property
    def mode(self) -> str:
        """``'full'`` or ``'two'`` (see :data:`MODES`)."""
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f'{type(self).__name__} {self.label!r}: mode {mode!r} does not exist; use "full" '
                             '(every candidate gets a gate gradient, as in NNI) or "two" (two-path binarization).')
        if mode == 'two' and len(self._arch_alpha) < 2:
            raise ValueError(f'{type(self).__name__} {self.label!r}: two-path mode needs at least two candidates, '
                             f'it has {len(self._arch_alpha)}.')
        self._mode = mode

    def _draw(self) -> int:
        """Draws the sampled index (and, in two-path mode, its partner) from ``softmax(alpha)``.

        Under ``proxyless_rs.distributed.setup`` every rank takes rank 0's draw.
        """
        search = _distributed_layers.get(self)
        if self.mode == 'two':
            active, inactive, before = self.ctx.sample_two()
            if search is not None:
                active, inactive = search.agree([active, inactive], self._arch_alpha.device)
            _pending_two_path[self._arch_alpha] = (active, inactive, before)
            self._partner = inactive
            return active
        self._partner = None
        index = self.ctx.sample()
        if search is not None:
            (index,) = search.agree([index], self._arch_alpha.device)
        return index

    def _follow(self, index: int) -> None:
        """The index came from the memo: in two-path mode, join the draw of the layer that made it.

        Without one (the memo was written by hand), the backward falls back to full mode.
        """
        pending = _pending_two_path.get(self._arch_alpha) if self.mode == 'two' else None
        self._partner = pending[1] if pending is not None and pending[0] == index else None


class ProxylessMixedLayer(_ProxylessSampling, DifferentiableMixedLayer):
    """A layer choice that runs one sampled candidate per step (ProxylessNAS).

    ``forward`` runs only the sampled path. In backward, a gradient hook on the layer's output
    evaluates the other candidates on the saved inputs and gives ``_arch_alpha`` the binary-gate
    gradient ``p_i (b_i - sum_j b_j p_j)`` with ``b_k = <out_k, grad_output>``, accumulated into
    ``_arch_alpha.grad`` so that other losses on alpha add up. (NNI registers a module full
    backward hook for this, which costs ~80 us per call; the output hook costs a few, and output
    tensors that alias the layer's inputs are returned as views.)

    Modes: ``'full'`` (default) is NNI's: every candidate is evaluated in backward. ``'two'`` is the
    paper's two-path binarization: ``resample`` draws two distinct candidates from
    ``softmax(alpha)`` and the active one of them from the softmax of their two logits; backward
    evaluates only the other one, and only their two logits get gradients (from that two-element
    softmax). After the architecture optimizer's step, :func:`rescale_two_path` must shift them
    back so that the other candidates' probabilities are unchanged.

    Limits: candidates must return a tensor, or a tuple, list or dict of tensors, all candidates
    the same structure; a layer called several times in one forward is assumed to be
    back-propagated in reverse call order (as in NNI). Unlike NNI 2.10, forward under
    ``torch.no_grad()`` saves nothing, and a bad memo or output fails with a message naming the
    label.

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
    mode : str
        ``'full'`` (default) or ``'two'``.
    """

    _arch_parameter_names = ['_arch_alpha']

    def __init__(self, paths: list[tuple[str, nn.Module]], alpha: torch.Tensor, softmax: nn.Module, label: str,
                 mode: str = 'full'):
        if len(alpha) != len(paths):
            raise ValueError(f'{type(self).__name__} {label!r}: alpha has {len(alpha)} entries, '
                             f'but there are {len(paths)} candidates ({", ".join(name for name, _ in paths)}).')
        super().__init__(paths, alpha, softmax, label)
        self._sampled: str | None = None
        self._sample_idx: int | None = None
        # alpha may be shared by several layers; the saved forwards are this layer's own.
        self.ctx = ProxylessContext(alpha, softmax, label)
        self._init_sampling(mode)

    def forward(self, *args, **kwargs):
        """Forward pass of the sampled path only."""
        if self._sample_idx is None:
            raise RuntimeError(f'{type(self).__name__} {self.label!r}: resample() needs to be called before forward.')
        output = self.forward_path(self._sample_idx, *args, **kwargs)
        return self.ctx.forward_output(self, (args, kwargs), output, self._sample_idx, self._partner)

    def forward_path(self, index: int, *args, **kwargs):
        """Output of candidate ``index``."""
        # NNI writes getattr(self, name), which reaches the submodule only after an AttributeError
        # has been raised and formatted inside nn.Module (~0.7 us a call, n calls a layer-backward).
        return self._modules[self.op_names[index]](*args, **kwargs)

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Take the path from ``memo`` if it names this label, else draw one from ``softmax(alpha)``."""
        if self.label in memo:
            self._sampled = memo[self.label]
            if self._sampled not in self.op_names:
                raise ValueError(f'{type(self).__name__} {self.label!r}: memo chose {self._sampled!r}, '
                                 f'which is not one of its candidates {self.op_names}.')
            self._sample_idx = self.op_names.index(self._sampled)
            self._follow(self._sample_idx)
        else:
            self._sample_idx = self._draw()
            self._sampled = self.op_names[self._sample_idx]

        self.ctx.clear_context()

        return {self.label: self._sampled}


class ProxylessMixedInput(_ProxylessSampling, DifferentiableMixedInput):
    """An input choice that passes one sampled input per step (ProxylessNAS).

    See :class:`ProxylessMixedLayer` (modes included); here candidate ``k`` is ``inputs[k]``. Only
    one input is chosen per step (``n_chosen`` is used by ``export``, as in NNI 2.10).

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
    mode : str
        ``'full'`` (default) or ``'two'``.
    """

    _arch_parameter_names = ['_arch_alpha', '_binary_gates']

    def __init__(self, n_candidates: int, n_chosen: int | None, alpha: torch.Tensor, softmax: nn.Module, label: str,
                 mode: str = 'full'):
        if len(alpha) != n_candidates:
            raise ValueError(f'{type(self).__name__} {label!r}: alpha has {len(alpha)} entries, '
                             f'but there are {n_candidates} candidates.')
        super().__init__(n_candidates, n_chosen, alpha, softmax, label)
        self._sampled: int | None = None
        self.ctx = ProxylessContext(alpha, softmax, label)
        self._init_sampling(mode)

    def forward(self, inputs: Sequence[Any]):
        """Return the sampled input."""
        if self._sampled is None:
            raise RuntimeError(f'{type(self).__name__} {self.label!r}: resample() needs to be called before forward.')
        if len(inputs) != self.n_candidates:
            raise ValueError(f'{type(self).__name__} {self.label!r}: expected {self.n_candidates} inputs, '
                             f'got {len(inputs)}.')
        output = self.forward_path(self._sampled, inputs)
        return self.ctx.forward_output(self, ((inputs,), {}), output, self._sampled, self._partner)

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
            self._follow(chosen)
        else:
            self._sampled = self._draw()

        self.ctx.clear_context()

        return {self.label: self._sampled}
