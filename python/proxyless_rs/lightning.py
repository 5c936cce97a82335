"""``proxyless_rs.ProxylessLightningModule``: the one-shot Lightning module that ``strategy.Proxyless``
runs, for whichever NNI is installed (``nni.v2.lightning``, ``nni.v3.lightning``; ``_adapter`` picks);
the step they share is ``_search_step``'s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._adapter import adapter

if TYPE_CHECKING:
    from .nni.v3.lightning import ProxylessLightningModule
else:
    ProxylessLightningModule = adapter('lightning').ProxylessLightningModule

__all__ = ['ProxylessLightningModule']
