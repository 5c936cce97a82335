"""Every choice of a supernet, whatever it is: a mixed layer or input (``_layer``), or a value choice of a
mixed operation (``_mixed``): what the search step, hardware costs, exports and distributed search walk,
and the blocks that switch the choices' work off (``no_arch_grad``, ``no_weight_grad``) and rescale
two-path draws; and the ``Resampler``, NNI's resample loop over a supernet's modules.

A choice has ``label``, ``ctx`` (its ``ProxylessContext``), ``_arch_alpha``, ``softmax``,
``probabilities()``, ``active_index`` and ``_name()``; a layer is a module, a value choice a
:class:`proxyless_rs._mixed.ValueChoiceSite` of its operation, a cell's op or input of one slot a
:class:`proxyless_rs._cell.CellChoice`, a depth expression's label a
:class:`proxyless_rs._depth.DepthChoice` (all :class:`proxyless_rs._site.ChoiceSite`: ``module``).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
import torch.nn as nn

from ._core import ArchParameter
from ._layer import ProxylessLayer, ProxylessLayerChoice
from ._mixed import ProxylessMixedOpPolicy
from ._site import SiteHolder

__all__ = ['Resampler', 'choices', 'choices_among', 'modules_of', 'beyond_nni', 'no_arch_grad', 'no_weight_grad',
           'rescale_two_path', 'unique_arch_parameters']


def modules_of(*roots: nn.Module) -> list[nn.Module]:
    """Every module inside ``roots``, each once, in ``nn.Module.modules()``'s order (depth first,
    parents before children), read from the ``_modules`` dicts without building ``named_modules``'
    names (twice as fast): what every walk below starts from."""
    seen: set[int] = set()
    found: list[nn.Module] = []
    stack: list[nn.Module | None] = list(reversed(roots))
    pop, push, visit, mark = stack.pop, stack.extend, found.append, seen.add
    while stack:
        module = pop()
        if module is None or id(module) in seen:
            continue
        mark(id(module))
        visit(module)
        children = module.__dict__['_modules']
        if children:
            push(reversed(children.values()))
    return found


def choices(*modules: nn.Module) -> Iterator[Any]:
    """The choices inside ``modules`` in module order: each mixed layer or input, each label of each
    mixed operation (in the operation's order), each slot's op and input of each cell, the label of
    each depth expression."""
    return choices_among(modules_of(*modules))


def choices_among(modules: Iterable[nn.Module]) -> Iterator[Any]:
    """The choices of each of ``modules`` itself (not inside it), in the order given."""
    for module in modules:
        if isinstance(module, ProxylessLayer):
            yield module
            continue
        policy = module.__dict__.get('sampling_policy')
        if isinstance(policy, ProxylessMixedOpPolicy):
            yield from policy.sites.values()
        elif isinstance(module, SiteHolder):
            yield from module.choice_sites()


def beyond_nni(*modules: nn.Module) -> list[str]:
    """What ``modules`` search that NNI's own ProxylessNAS cannot (both versions): value choices of
    mixed operations, cells searched as one unit, depth expressions; what ``exact=True`` refuses."""
    from ._cell import ProxylessCell
    from ._depth import ProxylessDepth

    found = []
    for kind, present in (('value choices (mixed operations)', lambda m: isinstance(
            m.__dict__.get('sampling_policy'), ProxylessMixedOpPolicy)),
                          ('cells', lambda m: isinstance(m, ProxylessCell)),
                          ('depth expressions', lambda m: isinstance(m, ProxylessDepth))):
        if any(present(m) for m in modules_of(*modules)):
            found.append(kind)
    return found


def unique_arch_parameters(choices: Iterable[Any]) -> list[ArchParameter]:
    """The choices' architecture parameters, each once (choices sharing a label share one), in order."""
    return list({id(choice.ctx.arch): choice.ctx.arch for choice in choices}.values())


class no_arch_grad:  # noqa: N801 (a block, named as torch.no_grad is)
    """Within this block, the ProxylessNAS choices inside ``modules`` (mixed layers and inputs, the
    value choices of mixed operations, cells, depth expressions) skip their alpha-gradient work.

    Forwards save nothing and attach no hook, so backward neither evaluates the unsampled
    candidates nor touches ``alpha.grad``: use it around a weight step whose alpha gradients
    would be thrown away. Weight gradients are unchanged. What else differs from a full step:
    the unsampled candidates' forwards in backward no longer run, so they neither update their
    BatchNorm running statistics nor draw random numbers (dropout), and later draws shift.
    Other modules (NNI's own layers included) are left as they are.

    The block finds the choices when it is made, walking ``modules``; made once and entered at
    every step (``block = no_arch_grad(net)`` ... ``with block:``), it saves that walk, and then
    covers the choices ``modules`` held when it was made. It may be entered again inside itself.
    """

    def __init__(self, *modules: nn.Module):
        self._contexts = [choice.ctx for choice in choices(*modules)]
        self._previous: list[list[bool]] = []

    def __enter__(self) -> None:
        contexts = self._contexts
        self._previous.append([ctx.enabled for ctx in contexts])
        for ctx in contexts:
            ctx.enabled = False

    def __exit__(self, *exc: object) -> None:
        for ctx, enabled in zip(self._contexts, self._previous.pop()):
            ctx.enabled = enabled


class no_weight_grad:  # noqa: N801 (a block, named as torch.no_grad is)
    """Within this block, backward computes the architecture gradients only: every parameter the
    step's forward can use, but the ProxylessNAS choices' alphas (and the tensors in ``keep``), has
    ``requires_grad`` off, restored on exit. The mirror image of :func:`no_arch_grad`, for an
    architecture step.

    Why: the architecture step uses alpha's gradient alone, yet a plain backward also computes
    the gradient of every weight on the sampled path (half a linear layer's or a convolution's
    backward arithmetic), and autograd keeps each such layer's input alive for it. Here autograd
    neither computes those nor saves what only they need; the gradient still flows through the
    sampled paths to every mixed layer's output (whose gradient tap carries alpha's path whatever
    its input and weights require), so every alpha gets exactly the gradient it gets without the
    block. What differs: no weight gets a gradient from the step (one-shot strategies clear them
    before the weight step anyway), and a hook on a weight does not fire.

    What is switched off: every parameter of ``modules`` outside the candidates of the mixed
    layers, and of each mixed layer the candidate drawn when the block is entered (all of its
    candidates before its first draw, or where a subclass or a patch made before the block
    replaced its ``forward_path``). The other candidates take no part in the step's forward (backward runs them
    under ``torch.no_grad()``), so their weights are left as they are: with 7 candidates a layer,
    that is 6 of every 7 switches saved, which in an overhead-bound search cost as much as the
    rest of the step's excess over its floor (docs/benchmarks.md). Hence: draw before entering (as
    README's recipe and the strategy do); a loss that reads weights of candidates not drawn (a
    decay term over every weight) gives them gradients.

    As :func:`no_arch_grad`, the block finds the parameters when it is made; made once and entered
    at every step, it saves that walk and covers the parameters ``modules`` held when it was made.
    Only the parameters that require a gradient on entry are switched off and back on.
    """

    def __init__(self, *modules: nn.Module, keep: Iterable[torch.Tensor] = ()):
        outside, layers = _split_at_candidates(modules)
        kept = {id(choice._arch_alpha) for choice in choices(*modules)} | {id(t) for t in keep}
        self._parameters = _parameters_of(outside, kept)
        kept |= {id(p) for p in self._parameters}
        # Each layer's candidates' parameters, by candidate; one shared by two candidates is in both.
        self._by_candidate = [(layer, [_parameters_of(modules_of(c), kept) for c in candidates])
                              for layer, candidates in layers]
        self._frozen: list[list[torch.Tensor]] = []

    def __enter__(self) -> None:
        frozen = [p for p in self._parameters if p.requires_grad]
        for p in frozen:
            p.requires_grad = False
        for layer, by_candidate in self._by_candidate:
            index = layer.active_index
            for weights in by_candidate if index is None or index >= len(by_candidate) else (by_candidate[index],):
                for p in weights:
                    if p.requires_grad:  # a parameter two switched candidates share: switched once
                        p.requires_grad = False
                        frozen.append(p)
        self._frozen.append(frozen)

    def __exit__(self, *exc: object) -> None:
        for p in self._frozen.pop():
            p.requires_grad = True


class Resampler:
    """A new draw of every choice of a supernet, as NNI's one-shot module's ``resample()`` makes it:
    each supernet module (NNI's ``BaseSuperNetModule``: mixed layers and inputs, mixed operations,
    cells, depth choices) inside ``roots``, in ``nn.Module.modules()``'s order, resampled with one
    memo, so that choices sharing a label take the first one's draw; ``resampler(memo)`` returns
    that memo, ``{label: choice}``, and takes the labels a given memo names from it. The same draws
    from the same seeds as NNI's loop (``memo.update(module.resample(memo))`` over the modules).

    Why a class: NNI's loop calls each module's ``resample`` (a Python frame, a dict made and
    merged), which in an overhead-bound search is a third of a draw's cost. A resampler made once
    (``resample = Resampler(net)`` ... ``resample()`` at every step, as the blocks are made once)
    draws each mixed layer in the same loop, from its context, and calls ``resample`` on the other
    modules (and on a mixed layer whose label the memo already holds, which checks the memo's
    choice). As with the blocks, it covers the modules ``roots`` held when it was made, with the
    classes and ``resample`` they had then; ``modules=`` gives the list instead of ``roots`` (the
    strategies hand their own, which NNI walks the same way).
    """

    def __init__(self, *roots: nn.Module, modules: Iterable[nn.Module] | None = None):
        if modules is None:
            from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule  # both NNI versions' path

            modules = [m for m in modules_of(*roots) if isinstance(m, BaseSuperNetModule)]
        elif roots:
            raise TypeError('Resampler: give roots or modules=, not both')
        self.modules = list(modules)
        self._plan = [_draw_plan(module) for module in self.modules]

    def __call__(self, memo: dict[str, Any] | None = None) -> dict[str, Any]:
        memo = {} if memo is None else memo
        for d, label, names_key, module in self._plan:
            if d is None or label in memo:
                memo.update(module.resample(memo))
                continue
            # ProxylessLayerChoice.resample's draw, without its frame (see there).
            index = d['ctx'].resample()
            d['_sample_idx'] = index
            memo[label] = d['_sampled'] = d[names_key][index]
        return memo


def _draw_plan(module: nn.Module) -> tuple[dict[str, Any] | None, Any, str, nn.Module]:
    """What :class:`Resampler` needs to draw ``module`` in its own loop: its instance dict, label
    and the key of its names there, where its ``resample`` is :class:`ProxylessLayerChoice`'s
    (else ``None``: the loop calls its ``resample``)."""
    d = module.__dict__
    if type(module).resample is not _layer_choice_resample or 'resample' in d:
        return None, None, '', module
    names_key = type(module)._names_attribute
    if not d.get(names_key) or 'ctx' not in d:
        return None, None, '', module
    return d, module.label, names_key, module


_layer_choice_resample = ProxylessLayerChoice.resample


def _split_at_candidates(roots: tuple[nn.Module, ...]) -> tuple[list[nn.Module], list[tuple[Any, list[nn.Module]]]]:
    """The modules inside ``roots`` reached without entering a mixed layer's candidates (each once,
    as :func:`modules_of`), and each such mixed layer with its candidate modules, where its forward
    runs the drawn candidate alone (:meth:`ProxylessLayerChoice._path_modules`). A module that is
    both a candidate and reached some other way is among the first."""
    seen: set[int] = set()
    outside: list[nn.Module] = []
    layers: list[tuple[Any, list[nn.Module]]] = []
    stack: list[nn.Module | None] = list(reversed(roots))
    while stack:
        module = stack.pop()
        if module is None or id(module) in seen:
            continue
        seen.add(id(module))
        outside.append(module)
        children = list(module.__dict__['_modules'].values())
        candidates = module._path_modules() if isinstance(module, ProxylessLayerChoice) else None
        if candidates is not None:
            layers.append((module, candidates))
            ids = {id(c) for c in candidates}
            children = [child for child in children if id(child) not in ids]
        stack.extend(reversed(children))
    return outside, layers


def _parameters_of(modules: Iterable[nn.Module], kept: set[int]) -> list[torch.Tensor]:
    """The parameters of ``modules`` themselves, each once, but those whose id is in ``kept``."""
    found: dict[int, torch.Tensor] = {}
    for module in modules:
        for p in module.__dict__['_parameters'].values():
            if p is not None and id(p) not in kept:
                found[id(p)] = p
    return list(found.values())


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
    for arch in unique_arch_parameters(choices(*modules)):
        arch.rescale()
