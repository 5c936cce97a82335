"""``proxyless_rs.strategy.Proxyless``: the one-shot ProxylessNAS strategy of whichever NNI is installed
(``nni.retiarii.strategy.Proxyless`` of NNI 2.10, ``nni.nas.strategy.Proxyless`` of NNI 3.0), on
proxyless_rs's layers and step."""

from __future__ import annotations

from ._nni_version import NNI3

if NNI3:
    from ._nni3_strategy import Proxyless
else:
    from ._nni2_strategy import Proxyless

__all__ = ['Proxyless']
