"""Cost tables: one cost of each alternative of each choice (:class:`CandidateTable`, latency's
:class:`LatencyTable`), several named ones (:class:`CostTable`); their checks against a model and
their JSON files. What fills them is :mod:`.counting`'s, what reads them :mod:`.loss`'s and
:mod:`.export`'s."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

import torch
import torch.nn as nn

from .._choices import choices
from .._layer import ProxylessLayerChoice
from .._site import ChoiceSite

__all__ = ['CandidateTable', 'LatencyTable', 'CostTable', 'TableLike']


def _choices(layer: Any) -> list[str]:
    """A choice's alternatives as a table (and NNI's ``export_probs``) spells them: a layer's
    candidate names, a value choice's values, an input choice's indices."""
    if isinstance(layer, (ProxylessLayerChoice, ChoiceSite)):
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
    operation with several value choices counts each one's row), each cell whose slots carry the
    label (an input choice's row is 0: the slot's op carries its cost) and each repeat of a depth
    expression (its row: what each depth adds over the shallowest).
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
