"""Hardware-aware search (ProxylessNAS paper, section 3.3): a latency lookup table, a profiler that
builds one on this machine, the expected latency of a supernet and the two loss forms."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn

from .._choices import choices
from .._layer import ProxylessLayerChoice, chosen_inputs
from .._mixed import ValueChoiceSite

__all__ = ['LatencyTable', 'CandidateTable', 'profile_latency', 'expected_latency', 'latency_loss',
           'predicted_latency', 'LOSS_FORMS']

LOSS_FORMS = ('log', 'mul', 'mul#log', 'add#linear')


def _choices(layer: Any) -> list[str]:
    """A choice's alternatives as a table (and NNI's ``export_probs``) spells them: a layer's
    candidate names, a value choice's values, an input choice's indices."""
    if isinstance(layer, (ProxylessLayerChoice, ValueChoiceSite)):
        return [str(name) for name in layer.names]  # NNI 3.0 names a list's candidates 0, 1, ...
    return [str(i) for i in range(layer.n_candidates)]


class CandidateTable(Mapping[str, Mapping[str, float]]):
    """One cost of each candidate of each mixed layer: ``{label: {choice: value}}``.

    Choices are candidate names for layer choices, values for value choices (as strings: ``'3'``)
    and input indices (as strings) for input choices, as in NNI's ``export_probs`` keys. Values
    must be finite and non-negative. A table is checked against a model (:meth:`check`) before it
    is used: every mixed layer's label and every candidate must be present. ``cost`` names the cost
    (``'params'``, ``'flops'``, ``'memory'`` or anything measured); :class:`LatencyTable` is the one
    for latency in milliseconds. Layers that share a label share its row: each such layer counts
    the row's value (once per layer); so does each mixed operation that uses a value choice (an
    operation with several value choices counts each one's row).
    """

    cost: str = 'cost'
    _plural = 'values'
    _unit = 'in one unit'

    def __init__(self, table: Mapping[str, Mapping[Any, float]], cost: str | None = None):
        if cost is not None:
            self.cost = str(cost)
            self._plural = f'{self.cost} values'
        self._table: dict[str, dict[str, float]] = {}
        for label, row in table.items():
            if not isinstance(row, Mapping):
                raise TypeError(f'{self.cost} table: the entry of layer {label!r} must map candidates to {self._unit}, '
                                f'got {type(row).__name__}')
            self._table[str(label)] = {}
            for choice, number in row.items():
                value = float(number)
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f'{self.cost} table: layer {label!r}, candidate {choice!r} has {self.cost} '
                                     f'{number!r}; {self._plural} must be finite and non-negative ({self._unit})')
                self._table[str(label)][str(choice)] = value

    def __getitem__(self, label: str) -> Mapping[str, float]:
        return self._table[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        if type(self) is CandidateTable:
            return f'CandidateTable({self._table!r}, cost={self.cost!r})'
        return f'{type(self).__name__}({self._table!r})'

    def check(self, *modules: nn.Module) -> None:
        """Raises ``KeyError`` naming the first mixed layer or candidate of ``modules`` missing from the table."""
        for layer in choices(*modules):
            if layer.label not in self._table:
                raise KeyError(f'{layer._name()}: the {self.cost} table has no entry for its label '
                               f'(it has {sorted(self._table)})')
            missing = [c for c in _choices(layer) if c not in self._table[layer.label]]
            if missing:
                raise KeyError(f'{layer._name()}: the {self.cost} table lacks candidate(s) {missing} '
                               f'(it has {sorted(self._table[layer.label])})')

    def latencies(self, layer: nn.Module) -> torch.Tensor:
        """The layer's candidates' values, in candidate order, on alpha's device and dtype."""
        row = self._table[layer.label]
        alpha = layer._arch_alpha
        return torch.tensor([row[c] for c in _choices(layer)], dtype=alpha.dtype, device=alpha.device)


    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self._table, indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> Any:
        return cls(json.loads(Path(path).read_text()), **kwargs)


class LatencyTable(CandidateTable):
    """Latency in milliseconds of each candidate of each mixed layer: ``{label: {choice: ms}}``.

    Choices are candidate names for layer choices and input indices (as strings) for input
    choices, as in NNI's ``export_probs`` keys. Latencies must be finite and non-negative. A table
    is checked against a model (:meth:`check`) before it is used: every mixed layer's label and
    every candidate must be present. The single-cost case of :class:`proxyless_rs.CostTable`.
    """

    cost = 'latency'
    _plural = 'latencies'
    _unit = 'milliseconds'

    def __init__(self, table: Mapping[str, Mapping[Any, float]]):
        super().__init__(table)


def expected_latency(model: nn.Module, table: CandidateTable) -> torch.Tensor:
    """``sum over mixed layers of sum_i softmax(alpha)_i * latency_i``: differentiable in every alpha.

    Each mixed layer counts once per module (layers sharing a label and alpha each count, since
    each runs). ``softmax`` is the layer's own, as in its sampling.
    """
    layers = list(choices(model))
    if not layers:
        raise ValueError('expected_latency: the model has no ProxylessNAS mixed layers or value choices')
    table.check(model)
    terms = [(layer.probabilities() * table.latencies(layer)).sum() for layer in layers]
    return torch.stack(terms).sum()


# Each form's default weight: the authors' defaults for the two forms of their code.
DEFAULT_WEIGHTS = {'log': 0.1, 'mul': 0.1, 'mul#log': 0.6, 'add#linear': 0.2}


def latency_loss(task_loss: torch.Tensor, expected: torch.Tensor, form: str = 'log', weight: float | None = None,
                 target: float | None = None, scale: float = 1.0) -> torch.Tensor:
    """The task loss with the expected latency (or any expected cost) folded in.

    Each form is named by where it comes from:

    - ``'log'``: ``task_loss + weight * log(E)``;
    - ``'mul'``: ``task_loss * (E / target) ** weight``: MnasNet's reward (Tan et al. 2019, with
      ``weight`` its exponent and ``target`` its target latency) as a loss, which is NNI 3.0's
      profiler-based latency penalty too. It is *not* the ProxylessNAS code's form;
    - ``'mul#log'``: ``scale * task_loss * (log(E) / log(target)) ** weight``, the ProxylessNAS
      authors' code (mit-han-lab/proxylessnas ``search/nas_manager.py``, ``add_regularization_loss``;
      ``scale`` is its ``alpha``, default 1, ``weight`` its ``beta``, default 0.6, ``target`` its
      ``ref_value``). ``log(E)`` and ``log(target)`` must have the same sign (both latencies above
      1 or both below, in the table's unit), as in the paper's milliseconds on a phone;
    - ``'add#linear'``: ``task_loss + weight * (E - target) / target``, the same code's other form
      (``weight`` is its ``lambda``, default 0.2).

    ``weight=None`` takes the form's default (:data:`DEFAULT_WEIGHTS`); ``weight == 0`` returns
    ``task_loss`` itself (no cost term in the graph).
    """
    if form not in LOSS_FORMS:
        raise ValueError(f'latency loss form {form!r} does not exist; use "log" (task + weight * log E[LAT]), '
                         '"mul" (task * (E[LAT] / target) ** weight, MnasNet\'s), "mul#log" (scale * task * '
                         '(log E[LAT] / log target) ** weight, the ProxylessNAS code\'s) or "add#linear" '
                         '(task + weight * (E[LAT] - target) / target, the ProxylessNAS code\'s)')
    if weight is None:
        weight = DEFAULT_WEIGHTS[form]
    if weight < 0 or not math.isfinite(weight):
        raise ValueError(f'latency weight must be finite and non-negative, got {weight!r}')
    if weight == 0:
        return task_loss
    if form == 'log':
        return task_loss + weight * torch.log(expected)
    if target is None or not target > 0 or not math.isfinite(target):
        raise ValueError(f'the "{form}" latency loss needs a positive target latency (ms), got {target!r}')
    if form == 'mul':
        return task_loss * (expected / target) ** weight
    if form == 'add#linear':
        return task_loss + weight * (expected - target) / target
    if target == 1:
        raise ValueError('the "mul#log" latency loss divides by log(target): target must not be 1')
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f'the "mul#log" scale (the authors\' alpha) must be positive, got {scale!r}')
    return scale * task_loss * (torch.log(expected) / math.log(target)) ** weight


def predicted_totals(architecture: Mapping[str, Any], model: nn.Module, tables: Mapping[str, Any],
                     caller: str) -> dict[str, float]:
    """``{name: total}`` that each of ``tables`` (``{label: {choice: value}}``) predicts for
    ``architecture`` (as exported) on ``model``'s mixed layers; an input choice exported with
    ``n_chosen > 1`` adds its chosen inputs. What ``predicted_latency`` and ``costs.predicted_costs``
    both compute."""
    totals = dict.fromkeys(tables, 0.0)
    for layer in choices(model):
        if layer.label not in architecture:
            raise KeyError(f'{layer._name()}: {caller} was given an architecture with no choice for it')
        choice = architecture[layer.label]
        if isinstance(layer, (ProxylessLayerChoice, ValueChoiceSite)):
            if str(choice) not in _choices(layer):
                raise ValueError(f'{layer._name()}: {caller} was given an architecture that chose {choice!r}, which is '
                                 f'not one of its choices {list(layer.names)}')
            chosen = [choice]
        else:  # an input choice: its indices, checked
            chosen = chosen_inputs(layer._name(), choice, layer.n_candidates)
        for name, single in tables.items():
            totals[name] += sum(single[layer.label][str(c)] for c in chosen)
    return totals


def predicted_latency(architecture: Mapping[str, Any], model: nn.Module, table: LatencyTable) -> float:
    """Latency (ms) the table predicts for ``architecture`` (as exported) on ``model``'s mixed layers."""
    table.check(model)
    return predicted_totals(architecture, model, {'latency': table}, 'predicted_latency')['latency']


def _rows(measured: list[tuple[Any, list[float]]]) -> dict[str, dict[str, float]]:
    """A table's rows from each choice's figures, one per alternative (in order).

    Layers sharing a label keep the largest instance's figure. A value choice's row is what each
    operation using it counts (:class:`CandidateTable`), so that the operations' counts add up to
    their cost: the mean over those operations of ``f(v) - f(v0) * (1 - 1/m)``, where ``f(v)`` is the
    operation's figure with this label at ``v`` and its other labels at their first values ``v0``,
    and ``m`` its number of value choices (never below 0). Summed over an operation's labels that is
    ``f(v0) + sum of each label's change from v0``: exact at the first values and wherever the cost
    adds up over the labels (a convolution's FLOPs in its kernel size and width multiply, and are
    approximated to first order).
    """
    layers: dict[str, dict[str, float]] = {}
    values: dict[str, dict[str, list[float]]] = {}
    for choice, figures in measured:
        label, keys = str(choice.label), _choices(choice)
        if isinstance(choice, ValueChoiceSite):
            m = len(choice.module.sampling_policy.sites)
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
    return choice.module if isinstance(choice, ValueChoiceSite) else choice


def _capture_inputs(model: nn.Module, layers: list[Any], example_args: tuple,
                    example_kwargs: dict) -> dict[int, tuple[tuple, dict]]:
    """Each choice's real inputs (a value choice's: its operation's): ``model(*example_args,
    **example_kwargs)`` once under ``no_grad`` with every choice fixed to its first alternative, by
    ``id(choice)``. The choices' sampled paths are restored afterwards."""
    owners = {id(_owner(layer)): _owner(layer) for layer in layers}
    sites = [layer for layer in layers if isinstance(layer, ValueChoiceSite)]
    plain = [layer for layer in layers if not isinstance(layer, ValueChoiceSite)]
    saved = {id(layer): (layer._sampled, getattr(layer, '_sample_idx', None), layer.active_index) for layer in plain}
    saved_sites = {id(site): site.index for site in sites}
    saved_arguments = {id(site.module): site.module.sampling_policy._current for site in sites}
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
            site.module.sampling_policy._current = saved_arguments[id(site.module)]
    return {id(layer): by_owner[id(_owner(layer))] for layer in layers if id(_owner(layer)) in by_owner}


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
