"""ProxylessNAS mixed layers backed by the Rust core, for whichever NNI is installed.

Under NNI 2.10, drop-ins for ``nni.nas.oneshot.pytorch.supermodule.proxyless.ProxylessMixedLayer`` and
``ProxylessMixedInput`` of NNI 2.10 (``_nni2_supermodule``); under NNI 3.0, for NNI 3.0's classes of
the same names and its ``ProxylessMixedRepeat`` (``_nni3_supermodule``). What they share, the draw,
the forward and the per-call backward, is in ``_layer`` and the Rust core.
"""

from __future__ import annotations

from ._layer import MODES, ProxylessLayer, depth_distribution, no_arch_grad, rescale_two_path
from ._nni_version import NNI3

if NNI3:
    from ._nni3_supermodule import ProxylessMixedInput, ProxylessMixedLayer, ProxylessMixedRepeat
else:
    from ._nni2_supermodule import ProxylessMixedInput, ProxylessMixedLayer, ProxylessMixedRepeat

__all__ = ['ProxylessMixedLayer', 'ProxylessMixedInput', 'ProxylessMixedRepeat', 'ProxylessLayer', 'MODES',
           'no_arch_grad', 'rescale_two_path', 'depth_distribution']
