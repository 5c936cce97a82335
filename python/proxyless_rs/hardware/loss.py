"""What costs add to the architecture loss: the expected cost of a supernet (differentiable in its
alphas), the loss forms (:func:`latency_loss`), hard limits (:func:`limit_penalty`,
:class:`LagrangeMultiplier`), several costs in one call (:func:`cost_loss`, :class:`CostSpec`), and
latency given as the strategies' ``latency_*`` options as the ``'latency'`` cost
(:func:`costs_with_latency`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import torch
import torch.nn as nn

from .._choices import choices
from .tables import CandidateTable, CostTable, LatencyTable, TableLike

__all__ = ['LOSS_FORMS', 'DEFAULT_WEIGHTS', 'expected_latency', 'expected_costs', 'latency_loss', 'limit_penalty',
           'LagrangeMultiplier', 'CostSpec', 'cost_loss', 'LATENCY_OPTIONS', 'costs_with_latency']


LOSS_FORMS = ('log', 'mul', 'mul#log', 'add#linear')


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


def expected_costs(model: nn.Module, table: TableLike) -> dict[str, torch.Tensor]:
    """``{cost: sum over mixed layers of sum_i softmax(alpha)_i * cost_i}``, each differentiable in alpha."""
    table = CostTable.of(table)
    return {cost: expected_latency(model, single) for cost, single in table.items()}


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
