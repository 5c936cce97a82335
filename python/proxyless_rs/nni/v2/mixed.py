"""proxyless_rs's ProxylessNAS policy for NNI 2.10's mixed operations (``nni.nas.oneshot.pytorch.supermodule
.operation``): :class:`proxyless_rs._mixed.ProxylessMixedOpPolicy` on NNI 2.10's ``ValueChoice``
expressions, with the ``parameters(arch=...)`` of NNI 2.10's differentiable policy."""

from __future__ import annotations

from typing import Any, Mapping

import torch.nn as nn
from nni.nas.oneshot.pytorch.supermodule._valuechoice_utils import evaluate_value_choice_with_dict
from nni.nas.oneshot.pytorch.supermodule.operation import (
    NATIVE_MIXED_OPERATIONS,
    MixedOperationSamplingPolicy,
)

from ..._mixed import ProxylessMixedOpPolicy
from .._shapes import register_native_shapes

__all__ = ['MixedOpProxylessPolicy', 'NATIVE_MIXED_OPERATIONS']

register_native_shapes(NATIVE_MIXED_OPERATIONS, hub='nni.nas.hub.pytorch.autoformer')


class MixedOpProxylessPolicy(ProxylessMixedOpPolicy, MixedOperationSamplingPolicy):
    """ProxylessNAS's sampling policy for NNI 2.10's mixed operations (see :mod:`proxyless_rs._mixed`)."""

    # NNI 2.10's differentiable policy leaves the alphas out of parameters(): its one-shot module's
    # architecture optimizer takes parameters(arch=True) of every searched module.
    _own_arch = False

    @staticmethod
    def leaves(operation: nn.Module) -> dict[str, list]:
        return {str(label): list(spec.values) for label, spec in operation.search_space_spec().items()}

    @staticmethod
    def compose(expression: Any, leaves: Mapping[str, Any]) -> Any:
        return evaluate_value_choice_with_dict(expression, dict(leaves))

    @staticmethod
    def sliced_weights(operation: nn.Module, arguments: Mapping[str, Any]) -> Mapping[str, Any]:
        return operation.slice_param(**arguments)

    def export_probs(self, operation: nn.Module, memo: dict[str, Any]) -> dict[str, Any]:
        """``{'label/value': probability}`` of each label the memo does not name (NNI 2.10's form)."""
        result = {}
        for label, site in self.sites.items():
            if any(key.startswith(label + '/') for key in memo):
                continue
            probs = site.probabilities().detach().cpu().tolist()
            result.update({f'{label}/{value}': p for value, p in zip(site.names, probs)})
        return result
