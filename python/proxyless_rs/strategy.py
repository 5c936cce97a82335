"""``proxyless_rs.strategy.Proxyless``: the one-shot ProxylessNAS strategy of whichever NNI is installed
(``nni.retiarii.strategy.Proxyless`` of NNI 2.10, ``nni.nas.strategy.Proxyless`` of NNI 3.0), on
proxyless_rs's layers and step."""

from __future__ import annotations

from .nni.version import NNI3

if NNI3:
    from .nni.v3.strategy import Proxyless
else:
    from .nni.v2.strategy import Proxyless

__all__ = ['Proxyless']
