"""``proxyless_rs.strategy.Proxyless`` for NNI 3.0: ``nni.nas.strategy.Proxyless`` on proxyless_rs's
layers and one-shot module."""

from __future__ import annotations

from typing import Any

from nni.nas.oneshot.pytorch.strategy import MutationHook, Proxyless as NNIProxyless, no_default_hook
from nni.nas.oneshot.pytorch.supermodule.differentiable import MixedOpDifferentiablePolicy

from ._nni3_lightning import ProxylessLightningModule
from ._nni3_supermodule import ProxylessMixedInput, ProxylessMixedLayer, ProxylessMixedRepeat, suppress_already_mutated
from .latency import LatencyTable

__all__ = ['Proxyless']


class Proxyless(NNIProxyless):
    """Drop-in for ``nni.nas.strategy.Proxyless`` of NNI 3.0, backed by :class:`proxyless_rs.ProxylessLightningModule`.

    NNI 3.0's keyword arguments: ``arc_learning_rate``, ``gradient_clip_val``, ``log_prob_every_n_step``,
    ``warmup_epochs``, ``penalty`` (a dict or an ``ExpectationProfilerPenalty``; here it has a gradient in
    alpha), ``mutation_hooks``; and proxyless_rs's: ``exact``, ``mode``, ``arch_update_every``,
    ``latency_table``, ``latency_weight``, ``latency_form``, ``latency_target``. ``LayerChoice``,
    ``InputChoice`` and ``Repeat`` with a categorical depth are searched, as by NNI 3.0. With
    ``latency_limit``, the export is the most probable architecture within the limit.
    ``export_top_models()`` / ``list_models()`` freeze the model space with the most probable choices
    (NNI 3.0's layers export a random draw).
    """

    def __init__(self, *, exact: bool = False, mode: str = 'full', arch_update_every: int = 1,
                 latency_table: LatencyTable | dict | None = None, latency_weight: float = 0.0,
                 latency_form: str = 'log', latency_target: float | None = None, latency_limit: float | None = None,
                 latency_limit_weight: float = 5.0, costs: Any = None, cost_spec: dict | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.proxyless_kwargs = dict(exact=exact, mode=mode, arch_update_every=arch_update_every,
                                     latency_table=latency_table, latency_weight=latency_weight,
                                     latency_form=latency_form, latency_target=latency_target,
                                     latency_limit=latency_limit, latency_limit_weight=latency_limit_weight,
                                     costs=costs, cost_spec=cost_spec)

    def configure_oneshot_module(self, training_module) -> ProxylessLightningModule:
        return ProxylessLightningModule(
            training_module, arc_learning_rate=self.arc_learning_rate, gradient_clip_val=self.gradient_clip_val,
            log_prob_every_n_step=self.log_prob_every_n_step, warmup_epochs=self.warmup_epochs, penalty=self.penalty,
            **self.proxyless_kwargs)

    def default_mutation_hooks(self) -> list[MutationHook]:
        return [suppress_already_mutated, ProxylessMixedLayer.mutate, ProxylessMixedInput.mutate,
                ProxylessMixedRepeat.mutate, no_default_hook]

    def run_hook(self, hook: MutationHook, name: str, module, memo: dict[str, Any]):
        # NNI 3.0's DARTS.run_hook, with the layers' mode added to the mutation keyword arguments.
        if not memo.get('_validated'):
            memo.update(self._arch_parameters)
            memo['_validated'] = True
        kwargs = {'mixed_op_sampling': MixedOpDifferentiablePolicy, 'softmax': self.configure_softmax(),
                  'proxyless_mode': self.proxyless_kwargs['mode']}
        return hook(module, name, memo, kwargs)

    def export_latency(self) -> float:
        """The latency (ms) the latency table predicts for the exported architecture."""
        return self.oneshot_module.export_latency()
