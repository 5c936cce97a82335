"""``proxyless_rs.ProxylessLightningModule``: the one-shot Lightning module that ``strategy.Proxyless``
runs, for whichever NNI is installed (``nni.v2.lightning``, ``nni.v3.lightning``); the step they share
is ``_search_step``'s."""

from __future__ import annotations

from .nni.version import NNI3

if NNI3:
    from .nni.v3.lightning import ProxylessLightningModule
else:
    from .nni.v2.lightning import ProxylessLightningModule

__all__ = ['ProxylessLightningModule']
