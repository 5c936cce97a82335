"""``proxyless_rs.costs``: the public names of :mod:`proxyless_rs.hardware.costs` (several costs, counting, the cost
loss, the exact constrained export)."""

from .hardware.costs import *  # noqa: F403
from .hardware.costs import __all__  # noqa: F401
