"""proxyless-rs: NNI 2.10's ProxylessNAS supermodule with its backward work done in Rust.

``ProxylessMixedLayer`` and ``ProxylessMixedInput`` are drop-ins for the classes of the same
name in ``nni.nas.oneshot.pytorch.supermodule.proxyless``: same constructors, attributes,
methods, parameter names and state_dict keys.
"""

# libtorch (and its Python bindings) must be loaded before the compiled core links to them.
import torch  # noqa: F401  (import order matters)

from ._core import BackwardHook, ProxylessContext, alpha_grad, sample_index
from .supermodule import MODES, ProxylessMixedInput, ProxylessMixedLayer, no_arch_grad, rescale_two_path
from .latency import LatencyTable, expected_latency, latency_loss, predicted_latency, profile_latency
from .lightning import ProxylessLightningModule
from .patch import patch_nni
from . import distributed, strategy

__version__ = "0.1.0"

__all__ = [
    "ProxylessMixedLayer",
    "ProxylessMixedInput",
    "ProxylessLightningModule",
    "no_arch_grad",
    "rescale_two_path",
    "MODES",
    "patch_nni",
    "strategy",
    "distributed",
    "LatencyTable",
    "profile_latency",
    "expected_latency",
    "latency_loss",
    "predicted_latency",
    "ProxylessContext",
    "BackwardHook",
    "alpha_grad",
    "sample_index",
]
