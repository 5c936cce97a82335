"""proxyless-rs: NNI's ProxylessNAS supermodule and strategy, for NNI 2.10 and NNI 3.0 alike, with
the backward work done in Rust, and value choices, cells and depth expressions searched too
(``ProxylessMixedCell``, ``ProxylessMixedDepth``).

``ProxylessMixedLayer`` and ``ProxylessMixedInput`` (and under NNI 3.0 ``ProxylessMixedRepeat``) are
drop-ins for the classes of the same name in ``nni.nas.oneshot.pytorch.supermodule.proxyless`` of
the installed NNI: same constructors, attributes, methods, parameter names and state_dict keys;
``strategy.Proxyless`` for its strategy.

``import proxyless_rs`` loads torch and the compiled core only. Everything that needs NNI is
loaded on first use: the layers (which subclass NNI's and so cost what importing NNI's own
supermodule costs), the latency tools, and the ``strategy``, ``lightning`` and ``distributed``
modules (Lightning and NNI's strategies are loaded only when one of those is touched).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# libtorch (and its Python bindings) must be loaded before the compiled core links to them.
import torch  # noqa: F401  (import order matters)

try:
    from . import _core  # noqa: F401  (the names below come from it)
except ImportError as err:
    from ._torch_check import explain_import_error

    raise explain_import_error(err) from err

from ._core import ProxylessContext, alpha_grad, sample_index


def _version() -> str:
    # The installed distribution's version, with the torch release a wheel was built for
    # (0.1.0+torch2.10); pyproject.toml's where the package runs from a checkout.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("proxyless-rs")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _version()

# Submodules loaded on first attribute access (``proxyless_rs.strategy``).
_LAZY_MODULES = ("strategy", "lightning", "distributed", "supermodule", "latency", "costs", "patch", "child",
                 "checkpoint")

# Names loaded on first access (``proxyless_rs.ProxylessMixedLayer``, ``from proxyless_rs import ...``),
# with the submodule that defines each.
_LAZY_NAMES = {
    "ProxylessMixedLayer": "supermodule",
    "ProxylessMixedInput": "supermodule",
    "ProxylessMixedRepeat": "supermodule",
    "ProxylessMixedCell": "supermodule",
    "ProxylessMixedDepth": "supermodule",
    "depth_distribution": "supermodule",
    "no_arch_grad": "supermodule",
    "Resampler": "supermodule",
    "no_weight_grad": "supermodule",
    "rescale_two_path": "supermodule",
    "MODES": "supermodule",
    "LatencyTable": "latency",
    "profile_latency": "latency",
    "expected_latency": "latency",
    "latency_loss": "latency",
    "predicted_latency": "latency",
    "CandidateTable": "latency",
    "CostTable": "costs",
    "CostSpec": "costs",
    "count_costs": "costs",
    "expected_costs": "costs",
    "predicted_costs": "costs",
    "constrained_export": "costs",
    "top_architectures": "costs",
    "limit_penalty": "costs",
    "LagrangeMultiplier": "costs",
    "cost_loss": "costs",
    "ProxylessLightningModule": "lightning",
    "patch_nni": "patch",
    "freeze": "child",
}

if TYPE_CHECKING:  # what type checkers and IDEs see (re-exported: `X as X`); at run time these load lazily
    from . import checkpoint, costs, distributed, lightning, strategy
    from .child import freeze as freeze
    from .costs import (
        CostSpec as CostSpec,
        CostTable as CostTable,
        LagrangeMultiplier as LagrangeMultiplier,
        constrained_export as constrained_export,
        cost_loss as cost_loss,
        count_costs as count_costs,
        expected_costs as expected_costs,
        limit_penalty as limit_penalty,
        predicted_costs as predicted_costs,
        top_architectures as top_architectures,
    )
    from .latency import (
        CandidateTable as CandidateTable,
        LatencyTable as LatencyTable,
        expected_latency as expected_latency,
        latency_loss as latency_loss,
        predicted_latency as predicted_latency,
        profile_latency as profile_latency,
    )
    from .lightning import ProxylessLightningModule as ProxylessLightningModule
    from .patch import patch_nni as patch_nni
    from .supermodule import (
        MODES as MODES,
        ProxylessMixedCell as ProxylessMixedCell,
        ProxylessMixedDepth as ProxylessMixedDepth,
        ProxylessMixedInput as ProxylessMixedInput,
        ProxylessMixedLayer as ProxylessMixedLayer,
        ProxylessMixedRepeat as ProxylessMixedRepeat,
        Resampler as Resampler,
        depth_distribution as depth_distribution,
        no_arch_grad as no_arch_grad,
        no_weight_grad as no_weight_grad,
        rescale_two_path as rescale_two_path,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
        globals()[name] = value  # later accesses skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_LAZY_MODULES))


# The names listed once, in _LAZY_NAMES (the TYPE_CHECKING imports above repeat them for type
# checkers, which cannot follow __getattr__; tests/test_import.py keeps the two equal).
__all__ = [
    *_LAZY_NAMES,
    "strategy",
    "lightning",
    "distributed",
    "costs",
    "checkpoint",
    "ProxylessContext",
    "alpha_grad",
    "sample_index",
]
