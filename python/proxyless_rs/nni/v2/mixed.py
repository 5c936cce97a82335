"""proxyless_rs's ProxylessNAS policy for NNI 2.10's mixed operations (``nni.nas.oneshot.pytorch.supermodule
.operation``): :class:`proxyless_rs._mixed.ProxylessMixedOpPolicy` on NNI 2.10's ``ValueChoice``
expressions, with the ``parameters(arch=...)`` of NNI 2.10's differentiable policy."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn
from nni.nas.oneshot.pytorch.supermodule import operation as nni_operation
from nni.nas.oneshot.pytorch.supermodule._valuechoice_utils import evaluate_value_choice_with_dict
from nni.nas.oneshot.pytorch.supermodule.operation import MixedOperationSamplingPolicy

from ..._mixed import ProxylessMixedOpPolicy
from .._shapes import register_native_shapes

__all__ = ['MixedOpProxylessPolicy', 'NATIVE_MIXED_OPERATIONS', 'MixedMultiHeadAttention']


class MixedMultiHeadAttention(nni_operation.MixedMultiHeadAttention):
    """NNI 2.10's mixed multi-head attention, whose in-projection is sliced by concatenating its q, k
    and v parts where one value is given: NNI 2.10 slices it through a mask of ``dtype=np.bool``,
    which numpy removed in 1.24 (NNI 3.0 spells it ``bool``), so that its own ``forward`` fails on the
    numpy its stack pins. The weighted case (a dict of values, NNI's differentiable policy) is NNI's."""

    def slice_param(self, embed_dim, kdim, vdim, **kwargs):  # noqa: ANN001, ANN201 (NNI's signature)
        if isinstance(embed_dim, dict) or isinstance(kdim, dict) or isinstance(vdim, dict):
            return super().slice_param(embed_dim, kdim, vdim, **kwargs)
        in_proj_weight, in_proj_bias = self.in_proj_weight, self.in_proj_bias
        # The rest of NNI's slicing (out projection, bias_k/v, separate q/k/v weights) takes no list of
        # slices: run it with the in-projection hidden, then put the in-projection's slices in.
        self._parameters['in_proj_weight'] = None
        self._parameters['in_proj_bias'] = None
        try:
            sliced = super().slice_param(embed_dim, kdim, vdim, **kwargs)
        finally:
            self._parameters['in_proj_weight'] = in_proj_weight
            self._parameters['in_proj_bias'] = in_proj_bias
        parts = [slice(0, embed_dim), slice(self.embed_dim, self.embed_dim + embed_dim),
                 slice(2 * self.embed_dim, 2 * self.embed_dim + embed_dim)]
        if in_proj_weight is not None:
            sliced['in_proj_weight'] = torch.cat([in_proj_weight[part, :embed_dim] for part in parts])
        if in_proj_bias is not None:
            sliced['in_proj_bias'] = torch.cat([in_proj_bias[part] for part in parts])
        return sliced


NATIVE_MIXED_OPERATIONS = [MixedMultiHeadAttention if op is nni_operation.MixedMultiHeadAttention else op
                           for op in nni_operation.NATIVE_MIXED_OPERATIONS]
"""NNI 2.10's mixed operations, its multi-head attention as :class:`MixedMultiHeadAttention`."""

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
