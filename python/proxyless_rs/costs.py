"""``proxyless_rs.costs``: the public path of :mod:`proxyless_rs.hardware.costs` (several costs, counting, the cost
loss, the exact constrained export).

The module itself is the one importing this path gives: ``proxyless_rs.costs is
proxyless_rs.hardware.costs``, so its names are defined in one place.
"""

import sys
from typing import TYPE_CHECKING

from .hardware import costs as _module

if TYPE_CHECKING:  # what type checkers see (they cannot follow the swap below)
    from .hardware.costs import *  # noqa: F403

sys.modules[__name__] = _module
