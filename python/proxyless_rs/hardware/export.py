"""Costs after the search: what a table predicts for an architecture (:func:`predicted_latency`,
:func:`predicted_costs`), the k most probable architectures (:func:`top_architectures`) and the most
probable one within cost limits (:func:`constrained_export`), exactly: the Rust core's branch and
bound (``src/constrained.rs``) on the choices' log-probabilities and costs."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn as nn

from .._choices import choices
from .._core import constrained_choices
from .._layer import DepthChain, ProxylessLayerChoice, chosen_inputs, depth_distribution
from .._site import ChoiceSite
from .tables import CostTable, LatencyTable, TableLike, _choices

__all__ = ['predicted_latency', 'predicted_costs', 'top_architectures', 'RankedArchitecture', 'constrained_export']


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
        if isinstance(layer, ChoiceSite):  # a value choice, a cell's op or input: its own form, checked
            chosen = [layer.names[layer.index_of_exported(choice)]]
        elif isinstance(layer, ProxylessLayerChoice):
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


def predicted_costs(architecture: Mapping[str, Any], model: nn.Module, table: TableLike) -> dict[str, float]:
    """``{cost: total}`` that the table predicts for ``architecture`` (as exported) on ``model``'s layers."""
    table = CostTable.of(table)
    table.check(model)
    return predicted_totals(architecture, model, table, 'predicted_costs')


def _log_probs(layer: nn.Module) -> torch.Tensor:
    """log softmax(alpha) in float64, without underflow when the softmax is ``nn.Softmax``."""
    alpha = layer._arch_alpha.detach().double()
    softmax = layer.softmax
    if type(softmax) is nn.Softmax:
        return torch.log_softmax(alpha, dim=-1 if softmax.dim is None else softmax.dim)
    return torch.log(softmax(alpha))


def _options(layer: Any) -> list[tuple[Any, list[str]]]:
    """``(exported value, table keys)`` for every choice the layer (or value choice) can export."""
    if isinstance(layer, ChoiceSite):
        return [(layer.exported(i), [str(name)]) for i, name in enumerate(layer.names)]
    if isinstance(layer, ProxylessLayerChoice):
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
            if isinstance(layer, (ProxylessLayerChoice, ChoiceSite)):
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
    branch and bound with admissible LP and Lagrangian bounds: ``src/constrained.rs``).
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
