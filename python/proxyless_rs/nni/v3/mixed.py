"""proxyless_rs's ProxylessNAS policy for NNI 3.0's mixed operations (``nni.nas.oneshot.pytorch.supermodule
.operation``): :class:`proxyless_rs._mixed.ProxylessMixedOpPolicy` on NNI 3.0's ``Categorical`` value
choices, and the input sizes of NNI 3.0's operations (its native ones and AutoFormer's)."""

from __future__ import annotations

from typing import Any, Mapping

import torch.nn as nn
from nni.mutable import Categorical
from nni.nas.oneshot.pytorch.supermodule.operation import (
    NATIVE_MIXED_OPERATIONS,
    MixedOperationSamplingPolicy,
)

from ..._mixed import ProxylessMixedOpPolicy
from .._shapes import register_native_shapes
from .layers import _outside_a_model_space

__all__ = ['MixedOpProxylessPolicy', 'NATIVE_MIXED_OPERATIONS']

register_native_shapes(NATIVE_MIXED_OPERATIONS, hub='nni.nas.hub.pytorch.autoformer')


class MixedOpProxylessPolicy(ProxylessMixedOpPolicy, MixedOperationSamplingPolicy):
    """ProxylessNAS's sampling policy for NNI 3.0's mixed operations (see :mod:`proxyless_rs._mixed`):
    the strategy's mutation hooks give it to every ``MixedOperation``, NNI's own and a space's."""

    @staticmethod
    def leaves(operation: nn.Module) -> dict[str, list]:
        leaves = {}
        for label, mutable in operation.simplify().items():
            if not isinstance(mutable, Categorical):
                raise TypeError(f'ProxylessNAS (proxyless_rs) searches categorical choices only; '
                                f'{type(operation).__name__} has {label!r} of type {type(mutable).__name__} '
                                f'({mutable!r})')
            leaves[str(label)] = list(mutable.values)
        return leaves

    @staticmethod
    def compose(expression: Any, leaves: Mapping[str, Any]) -> Any:
        return expression.freeze(dict(leaves))

    @staticmethod
    def sliced_weights(operation: nn.Module, arguments: Mapping[str, Any]) -> Mapping[str, Any]:
        return operation.freeze_weight(**arguments)

    @staticmethod
    def construct(cls: type, kwargs: Mapping[str, Any]) -> nn.Module:
        # A space's own operation (AutoFormer's class token) is NNI's, and reads the frozen context.
        with _outside_a_model_space():
            return cls(**kwargs)

    def export_probs(self, operation: nn.Module, memo: dict[str, Any]) -> dict[str, Any]:
        """``{label: {value: probability}}`` of each label the memo does not name (NNI 3.0's form)."""
        result = {}
        for label, site in self.sites.items():
            if label in memo:
                continue
            probs = site.probabilities().detach().cpu().tolist()
            result[label] = dict(zip(site.names, probs))
        return result
