"""``proxyless_rs.costs``: several costs, counting them, the cost loss with weights or hard limits, the k
best and the exact constrained export (from :mod:`proxyless_rs.hardware`'s ``tables``, ``counting``,
``loss`` and ``export``)."""

from .hardware.counting import COUNTED_COSTS, count_costs
from .hardware.export import RankedArchitecture, constrained_export, predicted_costs, top_architectures
from .hardware.loss import (
    LATENCY_OPTIONS,
    CostSpec,
    LagrangeMultiplier,
    cost_loss,
    costs_with_latency,
    expected_costs,
    limit_penalty,
)
from .hardware.tables import CostTable

__all__ = ['CostTable', 'CostSpec', 'count_costs', 'expected_costs', 'predicted_costs', 'constrained_export',
           'top_architectures', 'RankedArchitecture', 'limit_penalty', 'LagrangeMultiplier', 'cost_loss',
           'costs_with_latency', 'COUNTED_COSTS', 'LATENCY_OPTIONS']
