"""``patch_nni()``: make NNI's own ProxylessNAS build proxyless_rs's layers, without changing imports."""

from __future__ import annotations

import importlib
from typing import Any

from .nni.version import NNI3
from .supermodule import ProxylessMixedInput, ProxylessMixedLayer, ProxylessMixedRepeat

__all__ = ['patch_nni']

# Where NNI looks its Proxyless classes up when it builds a supernet (by name at call time, so
# rebinding the names suffices): NNI 2.10's supermodule and the Lightning module whose
# default_mutation_hooks names them; NNI 3.0's supermodule, which its strategy imports them from.
_TARGETS = (
    ('nni.nas.oneshot.pytorch.supermodule.proxyless',) if NNI3 else
    ('nni.nas.oneshot.pytorch.supermodule.proxyless', 'nni.nas.oneshot.pytorch.differentiable')
)
_REPLACEMENTS: dict[str, Any] = {'ProxylessMixedLayer': ProxylessMixedLayer, 'ProxylessMixedInput': ProxylessMixedInput}
if NNI3:
    _REPLACEMENTS['ProxylessMixedRepeat'] = ProxylessMixedRepeat


class NNIPatch:
    """The applied patch; ``undo()`` restores NNI's classes. Also a context manager that undoes itself."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []
        for target in _TARGETS:
            module = importlib.import_module(target)
            for name, replacement in _REPLACEMENTS.items():
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
