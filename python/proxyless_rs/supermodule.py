"""ProxylessNAS mixed layers backed by the Rust core, for whichever NNI is installed.

Under NNI 2.10, drop-ins for ``nni.nas.oneshot.pytorch.supermodule.proxyless.ProxylessMixedLayer`` and
``ProxylessMixedInput`` of NNI 2.10 (``nni.v2.layers``); under NNI 3.0, for NNI 3.0's classes of
the same names and its ``ProxylessMixedRepeat`` (``nni.v3.layers``). What they share, the draw,
the forward and the per-call backward, is in ``_layer`` and the Rust core.
"""

from __future__ import annotations

from ._choices import no_arch_grad, no_weight_grad, rescale_two_path
from ._layer import MODES, ProxylessLayer, depth_distribution
from .nni.version import NNI3

if NNI3:
    from .nni.v3.layers import ProxylessMixedInput, ProxylessMixedLayer, ProxylessMixedRepeat
else:
    from .nni.v2.layers import ProxylessMixedInput, ProxylessMixedLayer, ProxylessMixedRepeat

__all__ = ['ProxylessMixedLayer', 'ProxylessMixedInput', 'ProxylessMixedRepeat', 'ProxylessLayer', 'MODES',
           'no_arch_grad', 'no_weight_grad', 'rescale_two_path', 'depth_distribution']
