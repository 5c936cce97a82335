"""Hardware-aware search with several costs: a table of named costs per candidate, costs counted
from the real modules (parameters, FLOPs, peak activation memory), a loss with a weight or a
limit per cost, and the exact export under hard limits (:func:`constrained_export`, solved in
the Rust core).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import weakref
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Union

import torch
import torch.nn as nn

from .._choices import choices
from .._core import constrained_choices
from .._layer import DepthChain, ProxylessLayerChoice, depth_distribution
from .._mixed import ValueChoiceSite
from .._torch_compat import TorchDispatchMode, flop_counter_mode, tree_leaves
from .latency import (
    DEFAULT_WEIGHTS,
    LOSS_FORMS,
    CandidateTable,
    LatencyTable,
    _capture_inputs,
    _choices,
    _rows,
    expected_latency,
    latency_loss,
    predicted_totals,
)

__all__ = ['CostTable', 'CostSpec', 'count_costs', 'expected_costs', 'predicted_costs', 'constrained_export',
           'top_architectures', 'RankedArchitecture', 'limit_penalty', 'LagrangeMultiplier', 'cost_loss',
           'costs_with_latency', 'COUNTED_COSTS', 'LATENCY_OPTIONS']

COUNTED_COSTS = ('params', 'flops', 'memory')
"""What :func:`count_costs` counts: parameters (a number), FLOPs (a number) and peak activation
memory (bytes)."""

_UNITS = {'latency': 'milliseconds', 'params': 'parameters', 'flops': 'FLOPs', 'memory': 'bytes'}


def _single(cost: str, table: Mapping[str, Mapping[Any, float]]) -> CandidateTable:
    if isinstance(table, CandidateTable) and table.cost == cost:
        return table
    if cost == 'latency':
        return LatencyTable(table)
    return CandidateTable(table, cost=cost)


class CostTable(Mapping[str, CandidateTable]):
    """Several named costs of each candidate of each mixed layer: ``{cost: {label: {choice: value}}}``.

    Each cost is a :class:`CandidateTable` (``'latency'`` a :class:`LatencyTable`, in ms); names are
    free (``'latency'``, ``'params'``, ``'flops'``, ``'memory'`` or anything measured). Build one
    from dicts or tables, merge with ``CostTable({**a, **b})``, ``save`` / ``load`` as JSON.
    """

    def __init__(self, tables: Mapping[str, Mapping[str, Mapping[Any, float]]] | None = None, **more: Any):
        merged = {**(tables or {}), **more}
        if not merged:
            raise ValueError('CostTable needs at least one cost')
        self._tables = {str(cost): _single(str(cost), table) for cost, table in merged.items()}

    @classmethod
    def of(cls, table: Any) -> 'CostTable':
        """``table`` as a CostTable: a CostTable, a single-cost table (a ``LatencyTable`` is the
        ``'latency'`` cost, a ``CandidateTable`` its own cost), ``{cost: {label: {choice: v}}}``, or
        ``{label: {choice: ms}}`` (latency)."""
        if isinstance(table, CostTable):
            return table
        if isinstance(table, CandidateTable):
            return cls({table.cost: table})
        if not isinstance(table, Mapping):
            raise TypeError(f'expected a CostTable, a LatencyTable or a dict of costs, got {type(table).__name__}')
        rows = [row for row in table.values() if isinstance(row, Mapping)]
        if rows and all(isinstance(v, Mapping) for row in rows for v in row.values()):
            return cls(table)
        return cls({'latency': table})

    def __getitem__(self, cost: str) -> CandidateTable:
        try:
            return self._tables[cost]
        except KeyError:
            raise KeyError(f'the cost table has no cost {cost!r} (it has {list(self._tables)})') from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    def __repr__(self) -> str:
        return f'CostTable({ {k: dict(v) for k, v in self._tables.items()}!r})'

    def check(self, *modules: nn.Module) -> None:
        """Raises ``KeyError`` naming the first cost, mixed layer or candidate missing from the table."""
        for table in self._tables.values():
            table.check(*modules)

    def save(self, path: str | Path) -> None:
        data = {cost: {label: dict(row) for label, row in table.items()} for cost, table in self._tables.items()}
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> 'CostTable':
        return cls(json.loads(Path(path).read_text()))


TableLike = Union[CostTable, CandidateTable, Mapping[str, Any]]


# --- counting costs from the real modules ------------------------------------------------------

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
    module = layer.candidate(k) if isinstance(layer, ProxylessLayerChoice) else (
        layer.module if isinstance(layer, ValueChoiceSite) else None)
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


# --- expected and predicted costs --------------------------------------------------------------

def expected_costs(model: nn.Module, table: TableLike) -> dict[str, torch.Tensor]:
    """``{cost: sum over mixed layers of sum_i softmax(alpha)_i * cost_i}``, each differentiable in alpha."""
    table = CostTable.of(table)
    return {cost: expected_latency(model, single) for cost, single in table.items()}


def predicted_costs(architecture: Mapping[str, Any], model: nn.Module, table: TableLike) -> dict[str, float]:
    """``{cost: total}`` that the table predicts for ``architecture`` (as exported) on ``model``'s layers."""
    table = CostTable.of(table)
    table.check(model)
    return predicted_totals(architecture, model, table, 'predicted_costs')


# --- export under hard limits ------------------------------------------------------------------

def _log_probs(layer: nn.Module) -> torch.Tensor:
    """log softmax(alpha) in float64, without underflow when the softmax is ``nn.Softmax``."""
    alpha = layer._arch_alpha.detach().double()
    softmax = layer.softmax
    if type(softmax) is nn.Softmax:
        return torch.log_softmax(alpha, dim=-1 if softmax.dim is None else softmax.dim)
    return torch.log(softmax(alpha))


def _options(layer: Any) -> list[tuple[Any, list[str]]]:
    """``(exported value, table keys)`` for every choice the layer (or value choice) can export."""
    if isinstance(layer, (ProxylessLayerChoice, ValueChoiceSite)):
        return [(name, [str(name)]) for name in layer.names]
    n, k = layer.n_candidates, layer.n_chosen
    if k is None or k >= n:
        return [(list(range(n)) if n > 1 else 0, [str(i) for i in range(n)])]
    if k == 1:
        # Each NNI's own form of one exported input (NNI 2.10: its index, NNI 3.0: a one-element list).
        return [(layer.exported_input(i), [str(i)]) for i in range(n)]
    # NNI exports n_chosen > 1 as the sorted list of indices: every such subset is one option.
    return [(list(subset), [str(i) for i in subset]) for subset in itertools.combinations(range(n), k)]


def _limits(table: CostTable, limit: float | Mapping[str, float]) -> dict[str, float]:
    if isinstance(limit, Mapping):
        limits = {str(cost): float(value) for cost, value in limit.items()}
        for cost in limits:
            table[cost]  # a KeyError naming the costs there are
    else:
        if len(table) != 1:
            raise ValueError(f'the cost table has several costs {list(table)}: give the limit as {{cost: limit}}')
        limits = {next(iter(table)): float(limit)}
    for cost, value in limits.items():
        if math.isnan(value):
            raise ValueError(f'the limit on {cost} is NaN')
    return limits


class RankedArchitecture(NamedTuple):
    """One of :func:`top_architectures`'s answers."""

    architecture: dict[str, Any]
    """``{label: choice}`` as ``export`` gives it (a depth choice: its depth and its chain's choices)."""
    probability: float
    """The product over distinct labels of the chosen candidates' ``softmax(alpha)`` entries (a
    depth choice: the probability of its depth, :func:`proxyless_rs.depth_distribution`)."""
    costs: dict[str, float]
    """What the table predicts for it, per cost (empty without a table)."""


@dataclasses.dataclass
class _Group:
    """One choice of the architecture: a label (several layers may share it) or a depth choice.
    ``options[i]`` is what option ``i`` writes into the architecture, ``values[i]`` its log
    probability, ``costs[i][j]`` its cost ``j`` summed over the layers it covers."""

    owner: nn.Module
    options: list[dict[str, Any]]
    values: list[float]
    costs: list[list[float]]


def _choice_groups(model: nn.Module, table: CostTable | None) -> list[_Group]:
    names = list(table or ())
    singles = [table[cost] for cost in names] if table is not None else []  # in the order of names
    depth_chains = [m for m in model.modules() if isinstance(m, DepthChain)]
    in_chain = {id(layer) for chain in depth_chains for layer in chain._choices()}
    groups: dict[Any, _Group] = {}
    for layer in choices(model):
        if id(layer) in in_chain:
            continue
        options = _options(layer)
        group = groups.get(layer.label)
        if group is None:
            logp = _log_probs(layer).tolist()
            if isinstance(layer, (ProxylessLayerChoice, ValueChoiceSite)):
                values = [logp[i] for i in range(len(options))]
            else:
                values = [sum(logp[int(key)] for key in keys) for _, keys in options]
            group = groups[layer.label] = _Group(layer, [{layer.label: value} for value, _ in options], values,
                                                 [[0.0] * len(names) for _ in options])
        elif len(options) != len(group.options):
            raise ValueError(f'{layer._name()}: shares its label with {group.owner._name()} but has other choices')
        for option, (_, keys) in zip(group.costs, options):
            for j, single in enumerate(singles):
                option[j] += sum(single[layer.label][key] for key in keys)
    result = list(groups.values())
    for chain in depth_chains:
        # A depth choice is one choice among its depths, each built from its first blocks (as Repeat
        # builds it and `freeze` copies it), with the probability of that depth: the chain's
        # skip-or-block choices are not choices of their own.
        layers = chain._choices()
        taken = [_log_probs(layer).exp()[layer.names.index('1')] for layer in layers]
        probs = depth_distribution(taken).tolist()
        depth_options: list[dict[str, Any]] = []
        depth_values: list[float] = []
        depth_costs: list[list[float]] = []
        for depth in chain._depths():
            picks = chain._chain_for(depth)
            p = probs[depth - chain.min_depth]
            depth_options.append({chain.depth_label: depth, **picks})
            depth_values.append(math.log(p) if p > 0 else -math.inf)
            depth_costs.append([sum(single[label][pick] for label, pick in picks.items()) for single in singles])
        result.append(_Group(chain, depth_options, depth_values, depth_costs))
    return result


def _ranked(caller: str, model: nn.Module, table: CostTable | None, limits: Mapping[str, float],
            k: int) -> tuple[list[RankedArchitecture], int]:
    """The ``k`` most probable architectures within ``limits``, best first, and the search's nodes."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f'{caller}: k must be a positive integer, got {k!r}')
    if table is not None:
        table.check(model)
    groups = _choice_groups(model, table)
    if not groups:
        raise ValueError(f'{caller}: the model has no ProxylessNAS mixed layers')
    names = list(table or ())
    values = [group.values for group in groups]
    costs = [group.costs for group in groups]
    ranked, nodes = constrained_choices(values, costs, [limits.get(cost, math.inf) for cost in names], k)
    if not ranked:
        least = {cost: sum(min(option[j] for option in group) for group in costs) for j, cost in enumerate(names)}
        limited = {cost: least[cost] for cost in names if cost in limits}
        over = [cost for cost, value in limited.items() if value > limits[cost] + 1e-9 * max(1.0, abs(limits[cost]))]
        described = ', '.join(f'{cost} {value:.6g}' for cost, value in limited.items())
        asked = ', '.join(f'{cost} <= {limits[cost]:.6g}' for cost in limited)
        if over:
            raise ValueError(f'{caller}: no architecture meets {asked}; the smallest achievable '
                             f'{"values are" if len(limited) > 1 else "value is"} {described} '
                             f'(each cost on its own); {", ".join(over)} cannot be met')
        raise ValueError(f'{caller}: no architecture meets {asked} at once, although each limit can '
                         f'be met on its own (smallest achievable {described})')
    answers = []
    for choice, value in ranked:
        architecture: dict[str, Any] = {}
        for group, i in zip(groups, choice):
            architecture.update(group.options[i])
        totals = {cost: sum(costs[g][i][j] for g, i in enumerate(choice)) for j, cost in enumerate(names)}
        answers.append(RankedArchitecture(architecture, math.exp(value), totals))
    return answers, nodes


def top_architectures(model: nn.Module, k: int, *, table: TableLike | None = None,
                      limit: float | Mapping[str, float] | None = None) -> list[RankedArchitecture]:
    """The ``k`` most probable architectures of ``model``'s mixed layers, exactly, best first.

    An architecture's probability is the product over distinct labels of the chosen candidates'
    ``softmax(alpha)`` entries; a depth choice counts as one choice among its depths, with the
    probability of that depth (its chain's skip-or-block choices are those of its first blocks).
    The first is ``export``'s architecture. With a ``table`` each answer carries its predicted
    costs; with a ``limit`` too (as :func:`constrained_export` takes it) only architectures
    within it count. Fewer than ``k`` come back when fewer exist (or fit). Ties are ranked by the
    choices' indices, in the order of the model's layers.

    Solved in the Rust core by the branch and bound of :func:`constrained_export`, keeping the
    ``k`` best leaves; an option is left out beforehand only when ``k`` others of its choice cost
    no more and are no less probable.
    """
    if table is None and limit is not None:
        raise ValueError('top_architectures: a limit needs the table its costs come from')
    cost_table = CostTable.of(table) if table is not None else None
    limits = _limits(cost_table, limit) if cost_table is not None and limit is not None else {}
    return _ranked('top_architectures', model, cost_table, limits, k)[0]


def constrained_export(model: nn.Module, table: TableLike, limit: float | Mapping[str, float],
                       return_info: bool = False, *, k: int | None = None) -> Any:
    """The most probable architecture whose predicted costs are within the limits: exact.

    Returns ``{label: choice}`` as ``export`` does: among all architectures whose predicted cost
    (:func:`proxyless_rs.predicted_latency`, :func:`predicted_costs`) is at most ``limit`` for
    every limited cost, the one with the highest probability, the product over distinct labels of
    the chosen candidates' ``softmax(alpha)`` entries. ``table`` is a ``LatencyTable`` (``limit`` in
    ms) or a :class:`CostTable` with ``limit`` a ``{cost: limit}`` dict (costs left out are not
    limited; a number if the table has one cost). Layers that share a label take one choice: its
    probability counts once, its cost once per layer. Input choices take part like layer choices
    (with ``n_chosen > 1``, every subset of ``n_chosen`` inputs is one option, of probability the
    product of its entries). A depth choice is one choice among its depths (the probability of the
    depth; the costs of its first blocks and of the other blocks' skips). Limits allow a relative
    1e-9 for rounding.

    Solved exactly in the Rust core (a multiple-choice knapsack with one constraint per limit;
    branch and bound with admissible LP and Lagrangian bounds: ``src/arch/constrained.rs``).
    An impossible limit raises ``ValueError`` stating the smallest achievable value of each cost.
    With ``return_info=True`` returns ``(architecture, info)``, ``info`` holding the
    ``probability``, the predicted ``costs`` and the search ``nodes``. With ``k``, the ``k`` most
    probable within the limits, best first, as a list (of ``(architecture, info)`` pairs with
    ``return_info``): :func:`top_architectures` with a limit.
    """
    table = CostTable.of(table)
    limits = _limits(table, limit)
    answers, nodes = _ranked('constrained_export', model, table, limits, 1 if k is None else k)
    results = [(a.architecture, {'probability': a.probability, 'nodes': nodes, 'costs': a.costs}) if return_info
               else a.architecture for a in answers]
    return results if k is not None else results[0]


# --- the loss -----------------------------------------------------------------------------------

def limit_penalty(expected: torch.Tensor, limit: float, weight: float = 1.0, power: float = 2.0) -> torch.Tensor:
    """``weight * (max(0, expected - limit) / limit) ** power``: zero (and no gradient) at or below
    the limit, growing with the relative excess above it. Differentiable in ``expected``."""
    if not limit > 0 or not math.isfinite(limit):
        raise ValueError(f'limit_penalty needs a positive, finite limit, got {limit!r}')
    if weight < 0 or not math.isfinite(weight) or not power >= 1:
        raise ValueError(f'limit_penalty needs weight >= 0 and power >= 1, got weight={weight!r}, power={power!r}')
    return weight * (torch.relu(expected - limit) / limit) ** power


class LagrangeMultiplier:
    """A learned multiplier for ``expected <= limit`` (dual ascent), active only while it is above.

    ``term(expected)`` is ``multiplier * (expected / limit - 1)``, added to the loss; ``step(expected)``
    after each architecture step raises the multiplier by ``lr * (expected / limit - 1)`` while the
    expected cost is above the limit and lowers it (never below 0) once it is below, so the push
    lasts exactly as long as the limit is broken.
    """

    def __init__(self, limit: float, lr: float = 0.5, initial: float = 0.0):
        if not limit > 0 or not math.isfinite(limit):
            raise ValueError(f'LagrangeMultiplier needs a positive, finite limit, got {limit!r}')
        if not lr > 0 or initial < 0:
            raise ValueError(f'LagrangeMultiplier needs lr > 0 and initial >= 0, got lr={lr!r}, initial={initial!r}')
        self.limit, self.lr, self.value = float(limit), float(lr), float(initial)

    def term(self, expected: torch.Tensor) -> torch.Tensor:
        return self.value * (expected / self.limit - 1)

    def step(self, expected: torch.Tensor | float) -> float:
        excess = float(expected) / self.limit - 1
        self.value = max(0.0, self.value + self.lr * excess)
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {'limit': self.limit, 'lr': self.lr, 'value': self.value}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.limit, self.lr, self.value = float(state['limit']), float(state['lr']), float(state['value'])


@dataclasses.dataclass
class CostSpec:
    """What one cost adds to the architecture loss (:func:`cost_loss`).

    ``form`` (one of :data:`proxyless_rs.latency.LOSS_FORMS`, or None for no soft term) with its
    ``weight`` (None: the form's default), ``target`` and ``scale`` as in
    :func:`proxyless_rs.latency_loss`; ``limit``: a hard limit, pushed by :func:`limit_penalty`
    with ``penalty`` and ``power`` (or by ``multiplier``, a :class:`LagrangeMultiplier`, when given),
    and enforced at export by :func:`constrained_export`.
    """

    form: str | None = None
    weight: float | None = None
    target: float | None = None
    scale: float = 1.0
    limit: float | None = None
    penalty: float = 1.0
    power: float = 2.0
    multiplier: LagrangeMultiplier | None = None

    def __post_init__(self) -> None:
        if self.form is not None and self.form not in LOSS_FORMS:
            raise ValueError(f'cost loss form {self.form!r} does not exist; use one of {list(LOSS_FORMS)} or None')
        if self.form is not None:
            # Refuse a bad weight or target now rather than at the first step.
            latency_loss(torch.ones(()), torch.full((), 2.0), self.form, self.weight, self.target, self.scale)
        if self.limit is not None:
            limit_penalty(torch.zeros(()), self.limit, self.penalty, self.power)
        if self.multiplier is not None and self.limit is not None and self.multiplier.limit != self.limit:
            raise ValueError(f'the multiplier is for limit {self.multiplier.limit}, the spec says {self.limit}')


def _spec(value: CostSpec | Mapping[str, Any]) -> CostSpec:
    return value if isinstance(value, CostSpec) else CostSpec(**value)


def cost_loss(task_loss: torch.Tensor, model: nn.Module, table: TableLike,
              spec: Mapping[str, CostSpec | Mapping[str, Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The architecture loss with several costs: one call per architecture step.

    ``spec`` maps cost names of ``table`` to a :class:`CostSpec` (or its fields as a dict). The loss is
    ``task_loss * (product of the multiplicative forms' factors) + (the additive forms' terms) +
    (the limit penalties or multiplier terms)``; each form is :func:`proxyless_rs.latency_loss`'s
    with that cost's expected value (``'mul'`` and ``'mul#log'`` multiply, ``'log'`` and
    ``'add#linear'`` add), so a single cost gives exactly ``latency_loss``. Returns
    ``(loss, {cost: expected value, detached})``; a spec with a ``multiplier`` wants
    ``spec[cost].multiplier.step(details[cost])`` after the optimizer step.
    """
    table = CostTable.of(table)
    specs = {cost: _spec(value) for cost, value in spec.items()}
    for cost in specs:
        table[cost]
    expected = {cost: expected_latency(model, table[cost]) for cost in specs}
    factor: torch.Tensor | None = None
    added: list[torch.Tensor] = []
    one = torch.ones((), dtype=task_loss.dtype, device=task_loss.device)
    zero = torch.zeros((), dtype=task_loss.dtype, device=task_loss.device)
    for cost, s in specs.items():
        e = expected[cost]
        weight = DEFAULT_WEIGHTS[s.form] if s.form is not None and s.weight is None else s.weight
        if s.form is not None and weight:
            if s.form in ('mul', 'mul#log'):
                f = latency_loss(one, e, s.form, weight, s.target, s.scale)
                factor = f if factor is None else factor * f
            else:
                added.append(latency_loss(zero, e, s.form, weight, s.target))
        if s.multiplier is not None:
            added.append(s.multiplier.term(e))
        elif s.limit is not None and s.penalty:
            added.append(limit_penalty(e, s.limit, s.penalty, s.power))
    loss = task_loss if factor is None else task_loss * factor
    for term in added:
        loss = loss + term
    return loss, {cost: e.detach() for cost, e in expected.items()}


# --- latency as a cost --------------------------------------------------------------------------

LATENCY_OPTIONS = ('latency_table', 'latency_weight', 'latency_form', 'latency_target', 'latency_limit',
                   'latency_limit_weight')
"""The strategies' keyword arguments that spell the ``'latency'`` cost on its own."""


def costs_with_latency(costs: Any = None, cost_spec: Mapping[str, CostSpec | Mapping[str, Any]] | None = None, *,
                       latency_table: Any = None, latency_weight: float = 0.0, latency_form: str = 'log',
                       latency_target: float | None = None, latency_limit: float | None = None,
                       latency_limit_weight: float = 5.0) -> tuple[CostTable | None, dict[str, CostSpec]]:
    """``(table, spec)`` of a search's costs, where the ``latency_*`` options are the ``'latency'``
    cost: its table, and a spec of ``form`` / ``weight`` / ``target`` and a ``limit`` pushed by
    ``latency_limit_weight``. The one place latency given that way becomes a cost; refuses latency
    given both ways, a spec without its table and options without a latency table. A latency table
    without a weight or a limit adds nothing to the loss (``export_latency`` reads it)."""
    tables = {} if costs is None else dict(CostTable.of(costs))
    spec = {name: _spec(value) for name, value in (cost_spec or {}).items()}
    if (costs is None) != (not spec):
        raise ValueError('costs and cost_spec go together: a table of costs and what each adds to the loss')
    unknown = set(spec) - set(tables)
    if unknown:
        raise ValueError(f'cost_spec names costs {sorted(unknown)} that the table lacks (it has {list(tables)})')
    if latency_table is None:
        if latency_limit is not None:
            raise ValueError('latency_limit is set but no latency_table was given')
        if latency_weight:
            raise ValueError('latency_weight is set but no latency_table was given')
        return (CostTable(tables) if tables else None), spec
    if 'latency' in tables:
        raise ValueError("latency_table and a 'latency' cost in costs: give latency one way")
    tables['latency'] = LatencyTable(latency_table)
    if latency_weight or latency_limit is not None:
        spec['latency'] = CostSpec(form=latency_form, weight=latency_weight, target=latency_target, limit=latency_limit,
                                   penalty=latency_limit_weight)
    else:  # a bad form or target is refused all the same
        latency_loss(torch.zeros(()), torch.ones(()), latency_form, latency_weight, latency_target)
    return CostTable(tables), spec
