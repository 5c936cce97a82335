"""``proxyless_rs.ProxylessLightningModule``: the one-shot Lightning module that ``strategy.Proxyless``
runs, for whichever NNI is installed (``_nni2_lightning``, ``_nni3_lightning``); the step they share
is ``_search_step``'s."""

from __future__ import annotations

from ._nni_version import NNI3

if NNI3:
    from ._nni3_lightning import ProxylessLightningModule
else:
    from ._nni2_lightning import ProxylessLightningModule

__all__ = ['ProxylessLightningModule']
