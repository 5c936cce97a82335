"""``proxyless_rs.latency``: the public path of :mod:`proxyless_rs.hardware.latency` (latency tables, profiling, the
expected-latency loss).

The module itself is the one importing this path gives: ``proxyless_rs.latency is
proxyless_rs.hardware.latency``, so its names are defined in one place.
"""

import sys
from typing import TYPE_CHECKING

from .hardware import latency as _module

if TYPE_CHECKING:  # what type checkers see (they cannot follow the swap below)
    from .hardware.latency import *  # noqa: F403

sys.modules[__name__] = _module
