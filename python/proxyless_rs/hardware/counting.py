"""Costs counted or measured from the real modules on their real inputs: :func:`profile_latency`
(latency on this machine) and :func:`count_costs` (parameters, FLOPs, peak activation memory), and
how their figures become a table's rows."""

from __future__ import annotations

import statistics
import time
import weakref
from typing import Any

import torch
import torch.nn as nn

from .._choices import choices
from .._depth import DepthChoice
from .._layer import ProxylessLayerChoice
from .._mixed import ValueChoiceSite
from .._site import ChoiceSite
from .._torch_compat import TorchDispatchMode, flop_counter_mode, tree_leaves
from .tables import CostTable, LatencyTable, _choices

__all__ = ['profile_latency', 'count_costs', 'COUNTED_COSTS']


COUNTED_COSTS = ('params', 'flops', 'memory')


"""What :func:`count_costs` counts: parameters (a number), FLOPs (a number) and peak activation
memory (bytes)."""


def _rows(measured: list[tuple[Any, list[float]]]) -> dict[str, dict[str, float]]:
    """A table's rows from each choice's figures, one per alternative (in order).

    Layers sharing a label keep the largest instance's figure. The sites of a module (a value
    choice, a cell's slot, a depth expression) have rows that are what each instance counts
    (:class:`CandidateTable`), so that the instances' counts add up to their cost: for a cell's slot
    or a depth expression (whose figure is what each depth adds over the shallowest), the mean over
    the instances; for a value choice the mean over the operations using it of
    ``f(v) - f(v0) * (1 - 1/m)``, where ``f(v)`` is the operation's figure with this label at ``v``
    and its other labels at their first values ``v0``, and ``m`` its number of value choices (never
    below 0). Summed over an operation's labels that is ``f(v0) + sum of each label's change from
    v0``: exact at the first values and wherever the cost adds up over the labels (a convolution's
    FLOPs in its kernel size and width multiply, and are approximated to first order).
    """
    layers: dict[str, dict[str, float]] = {}
    values: dict[str, dict[str, list[float]]] = {}
    for choice, figures in measured:
        label, keys = str(choice.label), _choices(choice)
        if isinstance(choice, DepthChoice):  # what each depth adds over the shallowest
            figures = [figure - min(figures) for figure in figures]
        if isinstance(choice, ChoiceSite):
            m = len(choice.module.sampling_policy.sites) if isinstance(choice, ValueChoiceSite) else 1
            row = values.setdefault(label, {})
            for key, figure in zip(keys, figures):
                row.setdefault(key, []).append(max(0.0, figure - figures[0] * (1 - 1 / m)))
        else:
            row_max = layers.setdefault(label, {})
            for key, figure in zip(keys, figures):
                row_max[key] = max(row_max.get(key, 0.0), figure)
    for label, row in values.items():
        layers[label] = {key: sum(figures) / len(figures) for key, figures in row.items()}
    return layers


def _owner(choice: Any) -> nn.Module:
    """The module a choice's calls go through: the layer, or a value choice's operation."""
    return choice.module if isinstance(choice, ChoiceSite) else choice


def _capture_inputs(model: nn.Module, layers: list[Any], example_args: tuple,
                    example_kwargs: dict) -> dict[int, tuple[tuple, dict]]:
    """Each choice's real inputs (a value choice's: its operation's): ``model(*example_args,
    **example_kwargs)`` once under ``no_grad`` with every choice fixed to its first alternative, by
    ``id(choice)``. The choices' sampled paths are restored afterwards."""
    owners = {id(_owner(layer)): _owner(layer) for layer in layers}
    sites = [layer for layer in layers if isinstance(layer, ChoiceSite)]
    plain = [layer for layer in layers if not isinstance(layer, ChoiceSite)]
    saved = {id(layer): (layer._sampled, getattr(layer, '_sample_idx', None), layer.active_index) for layer in plain}
    saved_sites = {id(site): site.index for site in sites}
    # A mixed operation's argument values of the draw (a cell's draw is its sites' indices alone).
    saved_arguments = {id(site.module): site.module.sampling_policy._current for site in sites
                       if isinstance(site, ValueChoiceSite)}
    by_owner: dict[int, tuple[tuple, dict]] = {}
    handles = [owner.register_forward_pre_hook(
        lambda module, args, kwargs: by_owner.setdefault(id(module), (args, kwargs)), with_kwargs=True)
        for owner in owners.values()]
    try:
        memo: dict[str, Any] = {}
        for layer in plain:
            first = _choices(layer)[0] if isinstance(layer, ProxylessLayerChoice) else 0
            memo.update(layer.resample({layer.label: first, **memo}))
        for site in sites:
            memo.setdefault(site.label, site.names[0])
        for operation in {id(site.module): site.module for site in sites}.values():
            operation.resample(memo)
        with torch.no_grad():
            model(*example_args, **example_kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for layer in plain:
            # Taking the old index again also takes the old partner back (it is the pending draw's).
            sampled, index, active = saved[id(layer)]
            if active is not None:
                layer.ctx.resample(active)
            layer._sampled = sampled
            if isinstance(layer, ProxylessLayerChoice):
                layer._sample_idx = index
        for site in sites:
            site.index = saved_sites[id(site)]
            if id(site.module) in saved_arguments:
                site.module.sampling_policy._current = saved_arguments[id(site.module)]
    captured = {id(layer): by_owner[id(_owner(layer))] for layer in layers if id(_owner(layer)) in by_owner}
    with torch.no_grad():  # what each site's alternatives read (a cell's slot: its op's input)
        for site in sites:
            if id(site) in captured:
                captured[id(site)] = site.cost_inputs(*captured[id(site)])
    return captured


def profile_latency(model: nn.Module, *example_args: Any, repeats: int = 20, warmup: int = 3,
                    progress: bool = True, **example_kwargs: Any) -> LatencyTable:
    """Measures each candidate of each mixed layer on this machine, with the layer's real inputs.

    Runs ``model(*example_args, **example_kwargs)`` once under ``no_grad`` with every layer fixed
    to its first candidate to capture each layer's inputs, then times ``forward_path(k, ...)`` of
    every candidate (median of ``repeats`` runs after ``warmup``; CUDA is synchronised around each
    run); a value choice's values are timed on its operation with its other labels at their first
    values (the row: see ``_rows``). Progress is shown with tqdm. The layers' sampled paths are
    restored afterwards.
    """
    from tqdm import tqdm

    layers = list(choices(model))
    if not layers:
        raise ValueError('profile_latency: the model has no ProxylessNAS mixed layers or value choices')
    captured = _capture_inputs(model, layers, example_args, example_kwargs)

    def run(layer, k, args, kwargs):
        layer.forward_candidate(k, *args, **kwargs)
        if any(isinstance(t, torch.Tensor) and t.is_cuda for t in args):
            torch.cuda.synchronize()

    figures: dict[int, list[float]] = {}
    jobs = [(layer, k) for layer in layers if id(layer) in captured for k in range(len(_choices(layer)))]
    with torch.no_grad(), tqdm(jobs, desc='profiling candidates', disable=not progress, unit='op') as bar:
        for layer, k in bar:
            args, kwargs = captured[id(layer)]
            for _ in range(warmup):
                run(layer, k, args, kwargs)
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                run(layer, k, args, kwargs)
                samples.append((time.perf_counter() - start) * 1e3)
            figures.setdefault(id(layer), []).append(statistics.median(samples))
    table = _rows([(layer, figures[id(layer)]) for layer in layers if id(layer) in figures])
    return LatencyTable(table)


class _PeakMemory(TorchDispatchMode):
    """Bytes held by the tensors that the operations under it create, and their peak.

    Each storage an op returns is counted once, from its first tensor until its last tensor is
    freed (views share it; in-place results on inputs or parameters are not new). Workspace that a
    kernel allocates and frees inside itself (e.g. a convolution's im2col buffer), allocator
    rounding and caching are not seen.
    """

    def __init__(self, external: list[torch.Tensor]):
        super().__init__()
        self.external = {t.untyped_storage().data_ptr() for t in external}
        self.live: dict[int, list[int]] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.current -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self.external or storage.nbytes() == 0:
                continue
            entry = self.live.get(key)
            if entry is None:
                entry = self.live[key] = [storage.nbytes(), 0]
                self.current += entry[0]
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _value_parameters(site: ValueChoiceSite, k: int) -> float:
    """The parameters a mixed operation holds at value ``k`` of ``site`` (its other labels at their
    first values): its sliced weights (NNI's slicing), each tensor once."""
    operation = site.module
    policy = operation.sampling_policy
    names = {name for name, _ in nn.Module.named_parameters(operation) if not name.startswith('_arch_alpha.')}
    sliced = policy.sliced_weights(operation, policy.arguments(operation, site.leaves_at(k)))
    return float(sum(t.numel() for name, t in sliced.items() if name in names and isinstance(t, torch.Tensor)))


def _count_candidate(layer: Any, k: int, args: tuple, kwargs: dict, costs: tuple[str, ...]) -> dict[str, float]:
    result: dict[str, float] = {}
    if isinstance(layer, ProxylessLayerChoice):
        module = layer.candidate(k)
    elif isinstance(layer, ValueChoiceSite):
        module = layer.module
    else:  # a cell's slot, a depth expression (an input choice: None)
        module = layer.candidate_module(k) if isinstance(layer, ChoiceSite) else None
    if 'params' in costs:
        if isinstance(layer, ValueChoiceSite):
            result['params'] = _value_parameters(layer, k)
        else:
            unique = {} if module is None else {id(p): p for p in module.parameters()}
            result['params'] = float(sum(p.numel() for p in unique.values()))
    if 'flops' in costs:
        with flop_counter_mode() as counter:
            layer.forward_candidate(k, *args, **kwargs)
        result['flops'] = float(counter.get_total_flops())
    if 'memory' in costs:
        external = _tensors((args, kwargs))
        if module is not None:
            external += [*module.parameters(), *module.buffers()]
        tracker = _PeakMemory(external)
        with tracker:
            out = layer.forward_candidate(k, *args, **kwargs)
            del out
        result['memory'] = float(tracker.peak)
    return result


def count_costs(model: nn.Module, *example_args: Any, costs: tuple[str, ...] | list[str] = COUNTED_COSTS,
                **example_kwargs: Any) -> CostTable:
    """Counts each candidate's costs from the real modules on the real input, with no shape inference.

    Runs ``model(*example_args, **example_kwargs)`` once under ``no_grad`` to capture each mixed
    layer's inputs (as :func:`proxyless_rs.profile_latency` does), then for every candidate:

    - ``'params'``: its module's parameters (each tensor once), as a number; 0 for input choices;
    - ``'flops'``: FLOPs of ``forward_path(k, ...)`` on the captured input, as
      ``torch.utils.flop_counter.FlopCounterMode`` counts them: 2 per multiply-accumulate of
      matrix products, convolutions (transposed too, depthwise by their groups) and attention;
      elementwise ops count 0. Custom modules are counted through the aten ops they run (torch 2.1
      on: torch 2.0 has no FLOP counter);
    - ``'memory'``: peak bytes held by the tensors the candidate's ops create during its forward
      (its output included; its inputs and parameters excluded); workspace freed inside a kernel
      is not seen.

    FLOPs and memory are those of the example input: pass the batch size the figures are for.
    Layers that share a label keep the largest instance's figure (the table is per label). A value
    choice's values are counted on its operation (parameters: its sliced weights) with its other
    labels at their first values, and its row is what each operation using it adds (see
    ``latency._rows``: exact where a cost adds up over an operation's labels).
    """
    costs = tuple(costs)
    unknown = [c for c in costs if c not in COUNTED_COSTS]
    if unknown:
        raise ValueError(f'count_costs counts {list(COUNTED_COSTS)}; {unknown} cannot be counted '
                         '(measure it and put it in a CostTable yourself, e.g. latency with profile_latency)')
    layers = list(choices(model))
    if not layers:
        raise ValueError('count_costs: the model has no ProxylessNAS mixed layers or value choices')
    captured = _capture_inputs(model, layers, example_args, example_kwargs)
    figures: dict[str, list[tuple[Any, list[float]]]] = {cost: [] for cost in costs}
    with torch.no_grad():
        for layer in layers:
            if id(layer) not in captured:
                continue
            args, kwargs = captured[id(layer)]
            counted = [_count_candidate(layer, k, args, kwargs, costs) for k in range(len(_choices(layer)))]
            for cost in costs:
                figures[cost].append((layer, [c[cost] for c in counted]))
    return CostTable({cost: _rows(measured) for cost, measured in figures.items()})
