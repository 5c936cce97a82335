"""What proxyless_rs's mixed layers share, whichever NNI they subclass (no NNI import here).

The version-specific classes (``nni.v2.layers``, ``nni.v3.layers``) put this mixin in
front of NNI's ``DifferentiableMixedLayer`` / ``DifferentiableMixedInput``; the Rust core does
the rest. State has one owner each: a layer's mode, partner and live-call count are its
``ProxylessContext``'s; a two-path draw waiting for its rescale and the distributed agreement
belong to the ``ArchParameter`` that every layer sharing an alpha shares; what one forward call
saved belongs to the autograd node (the gradient tap) on that call's output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
from torch.utils.weak import WeakIdKeyDictionary

from ._core import ArchParameter, ProxylessContext
from ._torch_compat import is_compiling, mark_dynamo_disabled, plain_call

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


def label_alpha(memo: dict, label: Any, size: int, mismatch: str) -> nn.Parameter:
    """``label``'s architecture parameter: the one in ``memo`` (the choices of one label share one) or a
    new one of ``size`` logits (NNI's ``randn * 1e-3``), put there. ``mismatch`` names what is built and
    its choice, at the head of the ValueError raised where the memo's has another size."""
    alpha = memo.get(label)
    if alpha is None:
        alpha = memo[label] = nn.Parameter(torch.randn(size) * 1E-3)
    elif len(alpha) != size:
        raise ValueError(f'{mismatch}, but its architecture parameter has {len(alpha)} entries (a label used '
                         'with another number of alternatives elsewhere)')
    return alpha


def _proxyless_layers(*modules: nn.Module) -> Iterator[nn.Module]:
    for root in modules:
        for module in root.modules():
            if isinstance(module, ProxylessLayer):
                yield module


def depth_distribution(block_probs: list[torch.Tensor]) -> torch.Tensor:
    """``P(sum of independent Bernoulli(p_i) = k)`` for ``k = 0 .. len(block_probs)`` (a depth choice
    built as a chain of skip-or-block choices: ``p_i`` is the probability of taking block ``i``).

    Exact and differentiable, by the recurrence over the blocks (O(n^2) tensor ops), where enumerating
    the 2^n combinations, or sampling them, is what NNI 3.0 does.
    """
    if not block_probs:
        return torch.ones(1)
    dist = torch.ones(1, dtype=block_probs[0].dtype, device=block_probs[0].device)
    for p in block_probs:
        zero = dist.new_zeros(1)
        dist = torch.cat([dist, zero]) * (1 - p) + torch.cat([zero, dist]) * p
    return dist


_NOT_TRACEABLE = (
    '{}: torch.jit.{} cannot capture a ProxylessNAS layer: it runs the candidate sampled at each step and '
    'computes the architecture gradient in a backward hook, so a {} would freeze one path and silently drop '
    "alpha's gradient. Export the architecture (`export()`) and trace or script the fixed network instead "
    '(e.g. under NNI\'s `fixed_arch`); torch.compile works on the search itself.'
)


def _forward_under_dynamo(layer: Any, args: tuple, kwargs: dict, index: int) -> Any:
    """The layer's forward where torch.compile traces it: run eagerly, behind a graph break."""
    return layer.ctx.forward(layer._alternatives(), args, kwargs, index, layer._alpha_now())


# Dynamo does not inline it but runs it eagerly, and under fullgraph=True it refuses with this reason
# instead of failing inside the core.
mark_dynamo_disabled(
    _forward_under_dynamo,
    'proxyless_rs: a ProxylessNAS layer runs one sampled candidate and taps its output for the binary-gate '
    'backward, which Dynamo cannot capture in a graph; compile without fullgraph=True (the layer then runs '
    'eagerly between compiled graphs), or compile the candidates themselves',
)


def chosen_inputs(name: str, value: Any, n: int, source: str = 'the architecture chose',
                  lists: bool = True) -> list[int]:
    """An input choice's chosen inputs, from an architecture or a memo: an index, or (``lists``) a
    non-empty list of them, NNI 3.0's form. Anything else is refused naming the layer: an index out of
    range (-1 included: it would silently take the last input), a bool (``True`` would mean input 1),
    a string."""
    single = isinstance(value, int) and not isinstance(value, bool)
    indices = [value] if single else value
    valid = (single or lists) and isinstance(indices, (list, tuple)) and len(indices) > 0 and all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in indices)
    if not valid:
        form = " (or a list of them, NNI 3.0's form)" if lists else ''
        raise ValueError(f'{name}: {source} {value!r}, but the choices are the input indices {list(range(n))}{form}.')
    return list(indices)


def check_alpha_length(cls: type, label: Any, alpha: torch.Tensor, names: list) -> None:
    """Refuses an alpha whose length is not the number of candidates, naming the layer and them."""
    if len(alpha) != len(names):
        raise ValueError(f'{cls.__name__} {label!r}: alpha has {len(alpha)} entries, but there are {len(names)} '
                         f'candidates ({", ".join(map(str, names))}).')


class ProxylessLayer:
    """What every proxyless_rs mixed layer has: the context, the mode, the draw and the forward call."""

    _arch_alpha: torch.Tensor
    ctx: ProxylessContext
    label: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # nn.Module's call, less its two frames where it would call forward and nothing else
        # (_torch_compat.plain_call); any hook, compile or trace takes nn.Module's call as it is.
        if plain_call(self):
            return self.forward(*args, **kwargs)  # type: ignore[attr-defined]
        return super().__call__(*args, **kwargs)  # type: ignore[misc]

    @classmethod
    def mutate(cls, module, name, memo, mutate_kwargs):
        """NNI's mutation hook; the mode comes from ``mutate_kwargs['proxyless_mode']`` (default full)."""
        layer = super().mutate(module, name, memo, mutate_kwargs)
        if layer is not None:
            layer.mode = mutate_kwargs.get('proxyless_mode', 'full')
        return layer

    def _init_context(self, alpha: torch.Tensor, softmax: nn.Module, mode: str, names: list | None = None,
                      noun: str = 'candidate') -> None:
        # alpha may be shared by several layers (one label): so is its ArchParameter.
        self.ctx = ProxylessContext(_arch_parameter(alpha), softmax, self.label, self._name(), mode, names, noun)

    def _alpha_now(self) -> torch.Tensor:
        """The tensor that is the layer's alpha in this call: the registered parameter, or what
        ``torch.func.functional_call`` put in its place (an instance attribute or a ``_parameters``
        entry). Read from the dicts, without ``nn.Module.__getattr__``'s Python frame."""
        d = self.__dict__
        alpha = d.get('_arch_alpha')
        return d['_parameters']['_arch_alpha'] if alpha is None else alpha

    def _alternatives(self) -> Any:
        """The layer's alternatives as the core calls them: ``forward_path`` (called as
        ``forward_path(k, *args, **kwargs)``); a layer choice hands over its candidate modules."""
        return self.forward_path  # type: ignore[attr-defined]

    def _name(self) -> str:
        return f'{type(self).__name__} {self.label!r}'

    def parameters(self, recurse: bool = True, arch: bool | None = None) -> Iterator[nn.Parameter]:
        """The installed NNI's ``parameters()`` (NNI 2.10's layers leave the alphas out, NNI 3.0's
        include them), and one meaning of ``arch`` under both: ``arch=True`` the layer's alphas only,
        ``arch=False`` every parameter but them, so that a script builds its two optimizers the same
        way under either NNI (and their state dicts load under the other)."""
        if arch is None:
            return super().parameters(recurse=recurse)  # type: ignore[misc]
        # nn.Module's walk, not NNI 2.10's named_parameters (which reads arch itself, as NNI 3.0's does not).
        return (p for name, p in nn.Module.named_parameters(self, recurse=recurse)
                if (name in self._arch_parameter_names) == arch)  # type: ignore[attr-defined]

    @property
    def softmax(self) -> nn.Module:
        """The module that turns alpha into path probabilities: given once, at construction, and
        held by the context, which the backward uses (NNI's ``_softmax`` is the same object, kept
        for NNI's own code)."""
        return self.ctx.softmax

    def probabilities(self) -> torch.Tensor:
        """``softmax(alpha)``, differentiable in alpha (the cost and latency terms, the export)."""
        return self.ctx.softmax(self._arch_alpha)

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
        index = self.active_index  # type: ignore[attr-defined]
        return None if index is None else self.ctx.partner_of(index)

    def _forward_call(self, args: tuple, kwargs: dict, index: int | None) -> Any:
        if index is None:
            raise RuntimeError(f'{self._name()}: resample() needs to be called before forward.')
        if torch.jit.is_tracing():
            raise RuntimeError(_NOT_TRACEABLE.format(self._name(), 'trace', 'trace'))
        if is_compiling():
            return _forward_under_dynamo(self, args, kwargs, index)
        return self.ctx.forward(self._alternatives(), args, kwargs, index, self._alpha_now())

    def forward_candidate(self, index: int, *args, **kwargs) -> Any:
        """Candidate ``index`` on the arguments of a call of the layer (for profiling)."""
        return self.forward_path(index, *args, **kwargs)  # type: ignore[attr-defined]

    def __prepare_scriptable__(self):
        """Called by ``torch.jit.script``: refused, with the reason."""
        raise RuntimeError(_NOT_TRACEABLE.format(self._name(), 'script', 'scripted module'))


class ProxylessLayerChoice(ProxylessLayer):
    """What the layer choices of both NNI versions share: drawing (or taking from a memo) a candidate
    by its name in ``names``."""

    _sampled: Any
    _sample_idx: int | None
    _modules: dict[str, nn.Module]  # nn.Module's, which the class this mixin goes in front of has

    if TYPE_CHECKING:  # NNI 3.0's LayerChoice sets names itself, NNI 2.10's adapter has a property
        @property
        def names(self) -> list: ...

    # The instance attribute holding the candidates' names in the NNI class the adapter subclasses
    # (NNI 2.10: ``op_names``): each draw reads it there, without the ``names`` property's frame.
    _names_attribute = 'names'

    @property
    def active_index(self) -> int | None:
        """The index of the path the next forwards run (None before the first ``resample``)."""
        return self._sample_idx

    def candidate(self, index: int) -> nn.Module:
        """Candidate ``index``, the submodule registered under its name (as a str: NNI 3.0 names a
        list's candidates 0, 1, ...)."""
        return self._modules[str(self.names[index])]

    def _alternatives(self) -> Any:
        """The candidate modules, in order, where ``forward_path`` is the class's plain lookup
        (``_plain_forward_path``): the core then calls each module itself, without the lookup's
        Python frame. A subclass's or a patched ``forward_path`` is handed over as it is."""
        cls = type(self)
        d = self.__dict__
        if cls.forward_path is not cls._plain_forward_path or 'forward_path' in d:  # type: ignore[attr-defined]
            return self.forward_path  # type: ignore[attr-defined]
        modules = d.get('_candidate_modules')
        if modules is None:
            modules = d['_candidate_modules'] = [self.candidate(i) for i in range(len(self.names))]
        return modules

    def _path_modules(self) -> list[nn.Module] | None:
        """The candidate modules, in order, where a forward runs candidate ``active_index`` alone
        (the class's own ``forward_path``); None where a subclass's or a patched ``forward_path``
        may run any of them (what :class:`~proxyless_rs.no_weight_grad` freezes depends on it)."""
        alternatives = self._alternatives()
        return alternatives if isinstance(alternatives, list) else None

    def __setattr__(self, name: str, value: Any) -> None:
        # A candidate replaced by assignment: the list the core calls is built again.
        if isinstance(value, nn.Module):
            self.__dict__.pop('_candidate_modules', None)
        super().__setattr__(name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The call and the forward in one frame, where the call would run this class's forward and
        # nothing else: a layer's Python frames are most of what a step of an overhead-bound search
        # adds to its child network's (docs/benchmarks.md, the floor). Else nn.Module's call, or the
        # forward (a subclass's, a patched one; the refusal before the first draw).
        if not plain_call(self):
            return super(ProxylessLayer, self).__call__(*args, **kwargs)  # type: ignore[misc]
        d = self.__dict__
        index = d.get('_sample_idx')
        cls = type(self)
        if index is not None and cls.forward is _layer_choice_forward and 'forward' not in d:
            # _alternatives() and _alpha_now(), inlined where the candidate list is made and the
            # class's forward_path plain: their two frames were a fifth of a layer's own cost.
            modules = d.get('_candidate_modules')
            plain_path = cls.forward_path is cls._plain_forward_path  # type: ignore[attr-defined]
            if modules is None or not plain_path or 'forward_path' in d:
                modules = self._alternatives()
            alpha = d.get('_arch_alpha')
            if alpha is None:
                alpha = d['_parameters']['_arch_alpha']
            return d['ctx'].forward(modules, args, kwargs, index, alpha)
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        """Forward pass of the sampled path only."""
        index = self._sample_idx
        if index is None or is_compiling() or torch._C._is_tracing():
            return self._forward_call(args, kwargs, index)  # the refusals, and the path Dynamo traces
        # _forward_call's last line, inlined: a layer's Python frames are most of what a step of an
        # overhead-bound search adds to its child network's (docs/benchmarks.md, the floor).
        return self.ctx.forward(self._alternatives(), args, kwargs, index, self._alpha_now())

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Take the path from ``memo`` if it names this label, else draw one from ``softmax(alpha)``."""
        label = self.label
        # The names list read from the instance: NNI 2.10's ``names`` is a property (a frame).
        d = self.__dict__
        names = d.get(self._names_attribute) or self.names
        if label in memo:
            sampled = memo[label]
            if sampled not in names:
                raise ValueError(f'{self._name()}: memo chose {sampled!r}, which is not one of its candidates '
                                 f'{names}.')
            index = self.ctx.resample(names.index(sampled))
        else:
            index = self.ctx.resample()
        # Plain attributes (never parameters, buffers or modules), so set without nn.Module's
        # __setattr__, whose checks cost about 1 us each, on every layer at every draw.
        # proxyless_rs._choices.Resampler makes this draw (no memo entry) in its own loop.
        d['_sample_idx'] = index
        sampled = d['_sampled'] = names[index]
        return {label: sampled}


_layer_choice_forward = ProxylessLayerChoice.forward


class DepthChain:
    """What the depth choices of both NNI versions share: a ``Repeat`` whose blocks beyond
    ``min_depth`` are two-candidate layer choices between ``'0'`` (skip) and ``'1'`` (the block).

    The subclass provides ``blocks``, ``min_depth``, ``max_depth``, ``depth_label`` and
    ``depth_values`` (the depths the choice allows).
    """

    blocks: Any
    min_depth: int
    max_depth: int

    if TYPE_CHECKING:  # the adapters' properties
        @property
        def depth_label(self) -> str: ...

        @property
        def depth_values(self) -> list[int]: ...

    def _choices(self) -> list[Any]:
        return [self.blocks[d] for d in range(self.min_depth, self.max_depth)]

    def _block(self, i: int) -> nn.Module:
        """Block ``i`` of the depth choice itself (beyond ``min_depth``, the ``'1'`` candidate of its
        skip-or-block choice)."""
        layer = self.blocks[i]
        return layer if i < self.min_depth else layer.candidate(layer.names.index('1'))

    @staticmethod
    def _skip_or_block_chain(blocks: Iterable[nn.Module], min_depth: int, label_of: Callable[[int], Any],
                             memo: dict, make_layer: Callable[[Any, nn.Module, nn.Parameter], nn.Module]) -> list:
        """``blocks`` with every block from ``min_depth`` on wrapped as a two-candidate layer
        (``make_layer(label, block, alpha)``: ``'0'`` the identity, ``'1'`` the block), labelled
        ``label_of(i)``, whose alpha is taken from ``memo`` or created there (both NNI versions' mutation
        hooks build the chain so: one alpha per label, created in block order)."""
        chain = []
        for i, block in enumerate(blocks):
            if i < min_depth:
                chain.append(block)
                continue
            label = label_of(i)
            alpha = label_alpha(memo, label, 2, f'block {i} of a depth choice, {label!r}: skip or block')
            chain.append(make_layer(label, block, alpha))
        return chain

    def _check_chain(self, name: str) -> None:
        for layer in self._choices():
            if not isinstance(layer, ProxylessLayerChoice) or len(layer._arch_alpha) != 2:
                raise TypeError(f'{name}: blocks beyond the minimum depth must be two-candidate '
                                f'ProxylessMixedLayers (skip or block), got {type(layer).__name__}')

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Resample each skip-or-block choice; the depth is their sum (nothing if memo fixes the depth)."""
        if self.depth_label in memo:
            return {}
        depth = self.min_depth
        for layer in self._choices():
            memo.pop(layer.label, None)  # the chain's choices are drawn here, whatever the memo held
            memo.update(layer.resample(memo))
            depth += int(memo[layer.label])
        return {self.depth_label: depth}

    def depth_probs(self) -> torch.Tensor:
        """``P(depth = min_depth + k)`` for ``k = 0 .. max_depth - min_depth``, differentiable in the alphas."""
        return depth_distribution([layer.probabilities()[1] for layer in self._choices()])

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        """The most probable depth among the depth choice's values, computed exactly, and the choices of
        the chain that build it (its first blocks taken, the rest skipped, as ``Repeat`` builds it)."""
        if self.depth_label in memo:
            return {}
        with torch.no_grad():
            probs = self.depth_probs().cpu().tolist()
        depth = max(self._depths(), key=lambda v: (probs[v - self.min_depth], -v))
        return {self.depth_label: depth, **self._chain_for(depth)}

    def _depths(self) -> list[int]:
        """The depths the choice allows, in increasing order."""
        return sorted({v for v in self.depth_values if self.min_depth <= v <= self.max_depth})

    def _chain_for(self, depth: int) -> dict[Any, str]:
        """The chain's choices that build ``depth``: its first blocks taken, the rest skipped."""
        return {layer.label: '1' if self.min_depth + i < depth else '0' for i, layer in enumerate(self._choices())}

    def _depth_probs_by_depth(self) -> dict[int, float]:
        with torch.no_grad():
            return {self.min_depth + k: p for k, p in enumerate(self.depth_probs().cpu().tolist())}

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x

