"""``patch_nni()``: make NNI's own ProxylessNAS build proxyless_rs's layers, without changing imports."""

from __future__ import annotations

import importlib
from typing import Any

from ._adapter import adapter

__all__ = ['patch_nni']


class NNIPatch:
    """The applied patch; ``undo()`` restores NNI's classes. Also a context manager that undoes itself."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []
        layers = adapter('layers')
        for target in layers.NNI_PROXYLESS_MODULES:
            module = importlib.import_module(target)
            for name in layers.NNI_PROXYLESS_CLASSES:
                replacement = getattr(layers, name)
                self._saved.append((module, name, getattr(module, name)))
                setattr(module, name, replacement)

    @property
    def active(self) -> bool:
        return bool(self._saved)

    def undo(self) -> None:
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)
        self._saved = []

    def __enter__(self) -> 'NNIPatch':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.undo()


def patch_nni() -> NNIPatch:
    """Rebind NNI's ``ProxylessMixedLayer`` and ``ProxylessMixedInput`` (and under NNI 3.0
    ``ProxylessMixedRepeat``) to proxyless_rs's.

    After this, ``nni.retiarii.strategy.Proxyless()`` and NNI's ``ProxylessLightningModule`` mutate model
    spaces into the Rust-backed layers (NNI's training step itself is unchanged). Call ``.undo()`` on
    the result, or use it as a context manager::

        with proxyless_rs.patch_nni():
            RetiariiExperiment(space, evaluator, [], nni.retiarii.strategy.Proxyless()).run(config)
    """
    return NNIPatch()
