"""ProxylessNAS mixed layers backed by the Rust core, for whichever NNI is installed.

Under NNI 2.10, drop-ins for ``nni.nas.oneshot.pytorch.supermodule.proxyless.ProxylessMixedLayer`` and
``ProxylessMixedInput`` of NNI 2.10 (``nni.v2.layers``); under NNI 3.0, for NNI 3.0's classes of
the same names and its ``ProxylessMixedRepeat`` (``nni.v3.layers``); ``_adapter`` picks. What they
share, the draw, the forward and the per-call backward, is in ``_layer`` and the Rust core. Beyond
NNI's ProxylessNAS, under either NNI: ``ProxylessMixedCell`` (NNI's ``Cell`` as one unit,
``_cell``) and ``ProxylessMixedDepth`` (a ``Repeat`` whose depth is an expression of one label,
``_depth``), which the strategies' mutation hooks build.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._adapter import adapter
from ._choices import Resampler, no_arch_grad, no_weight_grad, rescale_two_path
from ._layer import MODES, ProxylessLayer, depth_distribution

if TYPE_CHECKING:  # what type checkers see: NNI 3.0's (NNI 2.10's have the same surface)
    from .nni.v3.cell import ProxylessMixedCell
    from .nni.v3.depth import ProxylessMixedDepth
    from .nni.v3.layers import ProxylessMixedInput, ProxylessMixedLayer, ProxylessMixedRepeat
else:
    _layers = adapter('layers')
    ProxylessMixedLayer = _layers.ProxylessMixedLayer
    ProxylessMixedInput = _layers.ProxylessMixedInput
    ProxylessMixedRepeat = _layers.ProxylessMixedRepeat
    ProxylessMixedCell = adapter('cell').ProxylessMixedCell
    ProxylessMixedDepth = adapter('depth').ProxylessMixedDepth

__all__ = ['ProxylessMixedLayer', 'ProxylessMixedInput', 'ProxylessMixedRepeat', 'ProxylessMixedCell',
           'ProxylessMixedDepth', 'ProxylessLayer', 'MODES', 'Resampler', 'no_arch_grad', 'no_weight_grad',
           'rescale_two_path', 'depth_distribution']
