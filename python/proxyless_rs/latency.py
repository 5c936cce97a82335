"""``proxyless_rs.latency``: latency tables, profiling, the expected-latency loss and what a table predicts
(from :mod:`proxyless_rs.hardware`'s ``tables``, ``counting``, ``loss`` and ``export``)."""

from .hardware.counting import profile_latency
from .hardware.export import predicted_latency
from .hardware.loss import LOSS_FORMS, expected_latency, latency_loss
from .hardware.tables import CandidateTable, LatencyTable

__all__ = ['LatencyTable', 'CandidateTable', 'profile_latency', 'expected_latency', 'latency_loss',
           'predicted_latency', 'LOSS_FORMS']
