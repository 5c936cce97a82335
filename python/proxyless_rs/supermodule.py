"""ProxylessNAS mixed layers backed by the Rust core.

Drop-ins for ``nni.nas.oneshot.pytorch.supermodule.proxyless.ProxylessMixedLayer`` and
``ProxylessMixedInput`` of NNI 2.10: this module keeps NNI's surface (constructors,
attributes, ``forward_path``, ``resample``, parameter names, state_dict keys) and hands the
forward, the per-call saved state, the backward hook, the alpha-gradient kernels and the
multinomial draws to ``proxyless_rs._core``.

State has one owner each: a layer's mode, partner and live-call count are its
``ProxylessContext``'s; a two-path draw waiting for its rescale and the distributed agreement
belong to the ``ArchParameter`` that every layer sharing an alpha shares; what one forward call
saved belongs to the hook on that call's output.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedInput, DifferentiableMixedLayer
from torch.utils.weak import WeakIdKeyDictionary

from ._core import ArchParameter, ProxylessContext

__all__ = ['ProxylessMixedLayer', 'ProxylessMixedInput', 'MODES', 'no_arch_grad', 'rescale_two_path']

MODES = ('full', 'two')
"""``'full'``: every candidate's binary gate gets a gradient (NNI's behaviour). ``'two'``: the
ProxylessNAS paper's two-path binarization (see :class:`ProxylessMixedLayer`)."""

# Finds the one ArchParameter of an alpha, so that layers built with a shared alpha share it. An
# index only: the state lives in the ArchParameter. Weak keys by identity: nothing outlives alpha.
_arch_parameters: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _arch_parameter(alpha: torch.Tensor) -> ArchParameter:
    arch = _arch_parameters.get(alpha)
    if arch is None:
        arch = _arch_parameters[alpha] = ArchParameter(alpha)
    return arch


def _proxyless_layers(*modules: nn.Module) -> Iterator[nn.Module]:
    for root in modules:
        for module in root.modules():
            if isinstance(module, (ProxylessMixedLayer, ProxylessMixedInput)):
                yield module


def _unique_arch_parameters(layers: Iterable[nn.Module]) -> list[ArchParameter]:
    """The layers' architecture parameters, each once (layers sharing a label share one), in order."""
    return list({id(layer.ctx.arch): layer.ctx.arch for layer in layers}.values())


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
    for arch in _unique_arch_parameters(_proxyless_layers(*modules)):
        arch.rescale()


_NOT_TRACEABLE = (
    '{}: torch.jit.{} cannot capture a ProxylessNAS layer: it runs the candidate sampled at each step and '
    'computes the architecture gradient in a backward hook, so a {} would freeze one path and silently drop '
    "alpha's gradient. Export the architecture (`export()`) and trace or script the fixed network instead "
    '(e.g. under NNI\'s `fixed_arch`); torch.compile works on the search itself.'
)


def _forward_under_dynamo(layer: nn.Module, args: tuple, kwargs: dict, index: int) -> Any:
    """The layer's forward where torch.compile traces it: run eagerly, behind a graph break."""
    return layer.ctx.forward(layer, args, kwargs, index)


# Marked the way torch.compiler.disable marks a function (set as attributes, because importing
# torch._dynamo to decorate it costs about a second at import): Dynamo does not inline it but runs it
# eagerly, and under fullgraph=True it refuses with this reason instead of failing inside the core.
_forward_under_dynamo._torchdynamo_disable = True  # type: ignore[attr-defined]
_forward_under_dynamo._torchdynamo_disable_msg = (  # type: ignore[attr-defined]
    'proxyless_rs: a ProxylessNAS layer runs one sampled candidate and hooks its output for the binary-gate '
    'backward, which Dynamo cannot capture in a graph; compile without fullgraph=True (the layer then runs '
    'eagerly between compiled graphs), or compile the candidates themselves'
)


class _ProxylessSampling:
    """What the two mixed classes share: the context, the mode, the draw and the forward call."""

    _arch_alpha: torch.Tensor
    ctx: ProxylessContext
    label: Any

    @classmethod
    def mutate(cls, module, name, memo, mutate_kwargs):
        """NNI's mutation hook; the mode comes from ``mutate_kwargs['proxyless_mode']`` (default full)."""
        layer = super().mutate(module, name, memo, mutate_kwargs)  # type: ignore[misc]
        if layer is not None:
            layer.mode = mutate_kwargs.get('proxyless_mode', 'full')
        return layer

    def _init_context(self, alpha: torch.Tensor, softmax: nn.Module, mode: str) -> None:
        # alpha may be shared by several layers (one label): so is its ArchParameter.
        self.ctx = ProxylessContext(_arch_parameter(alpha), softmax, self.label, self._name(), mode)

    def _name(self) -> str:
        return f'{type(self).__name__} {self.label!r}'

    @property
    def mode(self) -> str:
        """``'full'`` or ``'two'`` (see :data:`MODES`)."""
        return self.ctx.mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self.ctx.mode = mode

    @property
    def _partner(self) -> int | None:
        """Two-path mode: the other candidate of the current draw (None in full mode)."""
        return self.ctx.partner

    def _forward_call(self, args: tuple, kwargs: dict, index: int | None) -> Any:
        if index is None:
            raise RuntimeError(f'{self._name()}: resample() needs to be called before forward.')
        if torch.jit.is_tracing():
            raise RuntimeError(_NOT_TRACEABLE.format(self._name(), 'trace', 'trace'))
        if torch.compiler.is_compiling():
            return _forward_under_dynamo(self, args, kwargs, index)  # type: ignore[arg-type]
        return self.ctx.forward(self, args, kwargs, index)

    def __prepare_scriptable__(self):
        """Called by ``torch.jit.script``: refused, with the reason."""
        raise RuntimeError(_NOT_TRACEABLE.format(self._name(), 'script', 'scripted module'))


class ProxylessMixedLayer(_ProxylessSampling, DifferentiableMixedLayer):
    """A layer choice that runs one sampled candidate per step (ProxylessNAS).

    ``forward`` runs only the sampled path. In backward, a gradient hook on that call's output
    evaluates the other candidates on the call's saved inputs and gives ``_arch_alpha`` the
    binary-gate gradient ``p_i (b_i - sum_j b_j p_j)`` with ``b_k = <out_k, grad_output>``,
    accumulated into ``_arch_alpha.grad`` so that other losses on alpha add up.

    Why a hook on each call's output, which owns that call's saved inputs and output: NNI 2.10
    registers a module full backward hook (~80 us a call) and keeps the saved forwards on a
    per-layer stack that backward pops, which gives silently wrong gradients when a layer's calls
    are not back-propagated in exactly the reverse order (an output discarded, checkpointing,
    several losses). Here each call's backward uses that call's state, whatever the order; a
    backward with ``retain_graph=True`` keeps it for the next one, any other frees it.

    Modes: ``'full'`` (default) is NNI's: every candidate is evaluated in backward. ``'two'`` is the
    paper's two-path binarization: ``resample`` draws two distinct candidates from
    ``softmax(alpha)`` and the active one of them from the softmax of their two logits; backward
    evaluates only the other one, and only their two logits get gradients (from that two-element
    softmax). After the architecture optimizer's step, :func:`rescale_two_path` must shift them
    back so that the other candidates' probabilities are unchanged.

    Limits (each refused with an error naming the layer, never a silently wrong gradient):
    candidates return a tensor, or a tuple (namedtuples included), list or dict whose elements are
    tensors or pass-through values such as None, the same structure for every candidate; the
    layer's output and inputs must not be modified in place before its backward (a candidate whose
    first op works in place on the input is refused at forward; an in-place op on the output is
    refused in backward, except on an output that is one of the inputs, e.g. from an identity
    candidate, which is returned as a copy); ``torch.jit.trace`` / ``script`` are refused, and
    under ``torch.compile`` the layer runs eagerly behind a graph break (``fullgraph=True`` is
    refused). Unlike NNI 2.10, forward under ``torch.no_grad()`` saves nothing.

    Parameters
    ----------
    paths : list[tuple[str, nn.Module]]
        Candidates, as ``(name, module)`` pairs.
    alpha : Tensor
        Architecture logits, one per candidate (may be shared between layers with one label).
    softmax : nn.Module
        Turns ``alpha`` into probabilities, e.g. ``nn.Softmax(-1)`` or NNI's ``GumbelSoftmax``.
    label : str
        Name of the choice (any hashable, as in NNI).
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
        self._init_context(alpha, softmax, mode)

    def forward(self, *args, **kwargs):
        """Forward pass of the sampled path only."""
        return self._forward_call(args, kwargs, self._sample_idx)

    def forward_path(self, index: int, *args, **kwargs):
        """Output of candidate ``index``."""
        # NNI writes getattr(self, name), which reaches the submodule only after an AttributeError
        # has been raised and formatted inside nn.Module (~0.7 us a call, n calls a layer-backward).
        return self._modules[self.op_names[index]](*args, **kwargs)

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Take the path from ``memo`` if it names this label, else draw one from ``softmax(alpha)``."""
        if self.label in memo:
            sampled = memo[self.label]
            if sampled not in self.op_names:
                raise ValueError(f'{self._name()}: memo chose {sampled!r}, which is not one of its candidates '
                                 f'{self.op_names}.')
            self._sample_idx = self.ctx.resample(self.op_names.index(sampled))
        else:
            self._sample_idx = self.ctx.resample()
        self._sampled = self.op_names[self._sample_idx]
        return {self.label: self._sampled}


class ProxylessMixedInput(_ProxylessSampling, DifferentiableMixedInput):
    """An input choice that passes one sampled input per step (ProxylessNAS).

    See :class:`ProxylessMixedLayer` (modes and limits included); here candidate ``k`` is
    ``inputs[k]``, returned as a copy so that its hook sees this choice's gradient only. Only one
    input is chosen per step (``n_chosen`` is used by ``export``, as in NNI 2.10).

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
        self._init_context(alpha, softmax, mode)

    def forward(self, inputs: Sequence[Any]):
        """Return the sampled input."""
        if self._sampled is not None and len(inputs) != self.n_candidates:
            raise ValueError(f'{self._name()}: expected {self.n_candidates} inputs, got {len(inputs)}.')
        return self._forward_call((inputs,), {}, self._sampled)

    def forward_path(self, index: int, inputs: Sequence[Any]):
        """Input ``index``."""
        return inputs[index]

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Take the index from ``memo`` if it names this label, else draw one from ``softmax(alpha)``."""
        if self.label in memo:
            chosen = memo[self.label]
            if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < self.n_candidates:
                raise ValueError(f'{self._name()}: memo chose {chosen!r}, but the choices '
                                 f'are the input indices {list(range(self.n_candidates))}.')
            self._sampled = self.ctx.resample(chosen)
        else:
            self._sampled = self.ctx.resample()
        return {self.label: self._sampled}
