"""``proxyless_rs.strategy.Proxyless``: the one-shot ProxylessNAS strategy of whichever NNI is installed
(``nni.retiarii.strategy.Proxyless`` of NNI 2.10, ``nni.nas.strategy.Proxyless`` of NNI 3.0), on
proxyless_rs's layers and step; ``_adapter`` picks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._adapter import adapter

if TYPE_CHECKING:
    from .nni.v3.strategy import Proxyless
else:
    Proxyless = adapter('strategy').Proxyless

__all__ = ['Proxyless']
