"""``proxyless_rs.latency``: the public names of :mod:`proxyless_rs.hardware.latency` (latency tables, profiling, the
expected-latency loss)."""

from .hardware.latency import *  # noqa: F403
from .hardware.latency import __all__  # noqa: F401
