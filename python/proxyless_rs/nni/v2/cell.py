"""proxyless_rs's cell for NNI 2.10: :class:`proxyless_rs._cell.ProxylessCell` in front of NNI 2.10's
``PathSamplingCell`` (its graph of edges, its labels ``<cell>/op_<i>_<k>`` and ``<cell>/input_<i>_<k>``,
an input exported as its index, as NNI 2.10's ``Cell`` takes it)."""

from __future__ import annotations

from typing import Any

from nni.nas.oneshot.pytorch.supermodule.sampling import PathSamplingCell

from ..._cell import ProxylessCell

__all__ = ['ProxylessMixedCell']


class ProxylessMixedCell(ProxylessCell, PathSamplingCell):
    """A cell searched by ProxylessNAS (see :mod:`proxyless_rs._cell`), for NNI 2.10. Built by the
    Lightning module's mutation hook (NNI's ``PathSamplingCell.mutate``: cells whose ops depend on their
    input, or whose merge is ``loose_end``; any other cell's layer and input choices are searched one
    by one)."""

    def __init__(self, op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                 concat_dim, memo, mutate_kwargs, label):  # noqa: ANN001 (NNI's signature)
        super().__init__(op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                         concat_dim, memo, mutate_kwargs, label)
        self._init_choices(memo, mutate_kwargs)

    def _slot_labels(self, node: int, slot: int) -> tuple[str, str]:
        return f'{self.label}/op_{node}_{slot}', f'{self.label}/input_{node}_{slot}'

    @staticmethod
    def _exported_input(index: int) -> int:
        return index

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        """``{'label/choice': probability}`` of each label the memo does not name (NNI 2.10's form)."""
        result = {}
        for site in self.choice_sites():
            if not any(key.startswith(site.label + '/') for key in memo):
                probs = site.probabilities().detach().cpu().tolist()
                result.update({f'{site.label}/{name}': p for name, p in zip(site.names, probs)})
        return result

    def parameters(self, *args: Any, arch: bool | None = None, **kwargs: Any):  # noqa: ANN201
        """NNI 2.10's ``parameters(arch=...)``: the alphas, or all but them (``arch=None``: every one)."""
        for name, p in self.named_parameters(*args, **kwargs):
            if arch is None or name.startswith('_arch_alpha.') == arch:
                yield p
