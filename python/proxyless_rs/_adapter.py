"""The installed NNI's adapter (``proxyless_rs.nni.v2`` or ``proxyless_rs.nni.v3``), picked in this one
place, as NNI 3.0 picks its framework in ``nni/common/framework.py``: the public modules
(``supermodule``, ``lightning``, ``strategy``, ``patch``) take their classes from it, and nothing
below them asks which NNI is installed (only the probe, :mod:`proxyless_rs._nni_version`, which
checkpoints record).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._nni_version import NNI3

__all__ = ['ADAPTER', 'adapter']

ADAPTER = 'proxyless_rs.nni.v3' if NNI3 else 'proxyless_rs.nni.v2'
"""The package of the installed NNI's adapter."""


def adapter(name: str) -> ModuleType:
    """``<ADAPTER>.<name>`` (``'layers'``, ``'lightning'``, ``'strategy'``, ``'mixed'``), imported on first use."""
    return importlib.import_module(f'{ADAPTER}.{name}')
