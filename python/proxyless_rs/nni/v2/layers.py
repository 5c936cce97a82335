"""proxyless_rs's mixed layers for NNI 2.10: subclasses of its ``DifferentiableMixedLayer`` /
``DifferentiableMixedInput`` with the surface of its ``ProxylessMixedLayer`` / ``ProxylessMixedInput``
(``paths`` a list of ``(name, module)`` pairs, ``op_names``, ``_sampled`` an index)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from nni.common.hpo_utils import ParameterSpec
from nni.nas.nn.pytorch import Repeat
from nni.nas.nn.pytorch.choice import ValueChoice
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedInput, DifferentiableMixedLayer

from ..._layer import DepthChain, ProxylessLayer, ProxylessLayerChoice, check_alpha_length, chosen_inputs

__all__ = ['ProxylessMixedLayer', 'ProxylessMixedInput', 'ProxylessMixedRepeat', 'register_repeat_layers']

# What proxyless_rs.patch_nni() rebinds: where NNI 2.10 looks its Proxyless classes up when it builds
# a supernet (by name at call time): its supermodule, and the Lightning module whose
# default_mutation_hooks names them.
NNI_PROXYLESS_MODULES = ('nni.nas.oneshot.pytorch.supermodule.proxyless', 'nni.nas.oneshot.pytorch.differentiable')
NNI_PROXYLESS_CLASSES = ('ProxylessMixedLayer', 'ProxylessMixedInput')


class ProxylessMixedLayer(ProxylessLayerChoice, DifferentiableMixedLayer):
    """A layer choice that runs one sampled candidate per step (ProxylessNAS).

    ``forward`` runs only the sampled path, and passes its output through an autograd node that
    takes ``_arch_alpha`` as an input (the core's gradient tap). In a backward that reaches alpha,
    that node evaluates the other candidates on the call's saved inputs and returns the
    binary-gate gradient ``p_i (b_i - sum_j b_j p_j)`` with ``b_k = <out_k, grad_output>``, which
    autograd accumulates into ``_arch_alpha.grad`` so that other losses on alpha add up.

    Why a node on each call's output, which owns that call's saved inputs and output: NNI 2.10
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
        Candidates, as ``(name, module)`` pairs (a dict, NNI 3.0's form, is taken too).
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
    _names_attribute = 'op_names'

    def __init__(self, paths: list[tuple[str, nn.Module]] | dict[str, nn.Module], alpha: torch.Tensor,
                 softmax: nn.Module, label: str, mode: str = 'full'):
        if isinstance(paths, dict):  # NNI 3.0's form
            paths = list(paths.items())
        check_alpha_length(type(self), label, alpha, [name for name, _ in paths])
        super().__init__(paths, alpha, softmax, label)
        self._sampled: str | None = None
        self._sample_idx: int | None = None
        self._init_context(alpha, softmax, mode, list(self.op_names))

    @property
    def names(self) -> list[str]:
        """The candidates' names (NNI 3.0's name for NNI 2.10's ``op_names``)."""
        return self.op_names

    def forward_path(self, index: int, *args, **kwargs):
        """Output of candidate ``index``."""
        # NNI writes getattr(self, name), which reaches the submodule only after an AttributeError
        # has been raised and formatted inside nn.Module (~0.7 us a call, n calls a layer-backward).
        return self._modules[self.op_names[index]](*args, **kwargs)

    # The core calls the candidate modules directly (the same lookup) while the class's forward_path
    # is this function: a subclass's or a patched forward_path is called as such (_alternatives).
    _plain_forward_path = forward_path



class ProxylessMixedInput(ProxylessLayer, DifferentiableMixedInput):
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
        check_alpha_length(type(self), label, alpha, list(range(n_candidates)))
        super().__init__(n_candidates, n_chosen, alpha, softmax, label)
        self._sampled: int | None = None
        self._init_context(alpha, softmax, mode, noun='input')

    @property
    def active_index(self) -> int | None:
        """The index of the input the next forwards pass on (None before the first ``resample``)."""
        return self._sampled

    def forward(self, inputs: Sequence[Any]):
        """Return the sampled input."""
        if self._sampled is not None and len(inputs) != self.n_candidates:
            raise ValueError(f'{self._name()}: expected {self.n_candidates} inputs, got {len(inputs)}.')
        return self._forward_call((inputs,), {}, self._sampled)

    def forward_path(self, index: int, inputs: Sequence[Any]):
        """Input ``index``."""
        return inputs[index]

    @staticmethod
    def exported_input(index: int) -> int:
        """One chosen input as NNI 2.10's ``export`` gives it: its index."""
        return index

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Take the index from ``memo`` if it names this label, else draw one from ``softmax(alpha)``."""
        if self.label in memo:
            (chosen,) = chosen_inputs(self._name(), memo[self.label], self.n_candidates, 'memo chose', lists=False)
            self._sampled = self.ctx.resample(chosen)
        else:
            self._sampled = self.ctx.resample()
        return {self.label: self._sampled}


class ProxylessMixedRepeat(DepthChain, BaseSuperNetModule):
    """A depth choice (``Repeat`` with a ``ValueChoice`` depth) as a chain of skip-or-block choices, for
    NNI 2.10, whose own one-shot strategies refuse ``Repeat``.

    The same construction as NNI 3.0's ``ProxylessMixedRepeat`` (and proxyless_rs's for NNI 3.0): block
    ``i`` beyond ``min_depth`` becomes a :class:`ProxylessMixedLayer` labelled
    ``<depth label>/in_repeat_<i>`` between ``'0'`` (identity) and ``'1'`` (the block); the sampled depth
    is ``min_depth`` plus the number of blocks taken. ``export`` gives the most probable depth among the
    depth choice's values, computed exactly (:func:`depth_distribution`), and the skip-or-block choices
    that build it (its first blocks).
    """

    def __init__(self, blocks: list[nn.Module], label: str, values: list[int], min_depth: int, max_depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.label, self._depth_values = label, list(values)
        self.min_depth, self.max_depth = min_depth, max_depth
        self._check_chain(f'{type(self).__name__} {label!r}')

    @property
    def depth_label(self) -> str:
        return self.label

    @property
    def depth_values(self) -> list[int]:
        return self._depth_values

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        if self.label in memo:
            return {}
        return {f'{self.label}/{depth}': p for depth, p in self._depth_probs_by_depth().items()}

    def search_space_spec(self) -> dict[str, ParameterSpec]:
        return {self.label: ParameterSpec(self.label, 'choice', self.depth_values, (self.label,), True,
                                          size=len(self.depth_values))}

    def parameters(self, *args, **kwargs):
        """Like ``nn.Module.parameters``; ``arch=True`` gives nothing: the chain's layers hold the alphas."""
        if kwargs.pop('arch', False):
            return iter(())
        return super().parameters(*args, **kwargs)

    @classmethod
    def mutate(cls, module, name, memo, mutate_kwargs):
        if not isinstance(module, Repeat) or not isinstance(module.depth_choice, ValueChoice) or \
                hasattr(module, 'first_cell_transformation_factory'):
            return None  # an expression, or NNI's NDS stage: ``ProxylessMixedDepth``'s
        label = module.depth_choice.label
        values = list(module.depth_choice.all_options())
        if not all(isinstance(v, int) for v in values):
            raise ValueError(f'Repeat {name!r}: the depth choice must be a plain choice of integers, got {values}')
        softmax = mutate_kwargs.get('softmax', nn.Softmax(-1))
        mode = mutate_kwargs.get('proxyless_mode', 'full')

        def make_layer(inner: str, block: nn.Module, alpha: nn.Parameter) -> nn.Module:
            layer = ProxylessMixedLayer([('0', nn.Identity()), ('1', block)], alpha, softmax, inner, mode)
            layer._in_repeat = True
            return layer

        blocks = cls._skip_or_block_chain(module.blocks, module.min_depth, lambda i: f'{label}/in_repeat_{i}', memo,
                                          make_layer)
        return cls(blocks, label, values, module.min_depth, module.max_depth)


def register_repeat_layers(module, name, memo, mutate_kwargs) -> nn.Module | None:
    """The first mutation hook: the layers a depth choice built join the searched modules as they are."""
    if getattr(module, '_in_repeat', False):
        return module
    return None
