"""proxyless_rs's cell for NNI 3.0: :class:`proxyless_rs._cell.ProxylessCell` in front of NNI 3.0's
``PathSamplingCell`` (its graph of edges, its labels ``<cell>/op_<i>_<k>`` and ``<cell>/input_<i>_<k>``,
an input exported as a one-element list, as NNI 3.0's ``Cell`` takes it)."""

from __future__ import annotations

from typing import Any

from nni.nas.oneshot.pytorch.supermodule.sampling import PathSamplingCell

from ..._cell import ProxylessCell

__all__ = ['ProxylessMixedCell']


class ProxylessMixedCell(ProxylessCell, PathSamplingCell):
    """A cell searched by ProxylessNAS (see :mod:`proxyless_rs._cell`), for NNI 3.0. Built by the
    strategy's mutation hook (NNI's ``PathSamplingCell.mutate``: cells whose ops depend on their input,
    or whose merge is ``loose_end``; any other cell's layer and input choices are searched one by one)."""

    def __init__(self, op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                 concat_dim, memo, mutate_kwargs, label):  # noqa: ANN001 (NNI's signature)
        super().__init__(op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                         concat_dim, memo, mutate_kwargs, label)
        self._init_choices(memo, mutate_kwargs)

    def _slot_labels(self, node: int, slot: int) -> tuple[str, str]:
        return f'{self.label}/op_{node}_{slot}', f'{self.label}/input_{node}_{slot}'

    @staticmethod
    def _exported_input(index: int) -> list[int]:
        return [index]

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        """``{label: {choice: probability}}`` of each label the memo does not name (NNI 3.0's form)."""
        return {site.label: dict(zip(site.names, site.probabilities().detach().cpu().tolist()))
                for site in self.choice_sites() if site.label not in memo}
