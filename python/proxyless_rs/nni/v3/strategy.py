"""``proxyless_rs.strategy.Proxyless`` for NNI 3.0: ``nni.nas.strategy.Proxyless`` on proxyless_rs's
layers and one-shot module."""

from __future__ import annotations

from typing import Any, Iterator

# NNI's strategy package must finish initialising before its one-shot strategies are imported
# directly: the other order leaves nni.nas.strategy.DARTS (and the rest) bound to failed-import stubs.
import nni.nas.strategy  # noqa: F401  (import order matters)
from nni.nas.oneshot.pytorch.strategy import MutationHook, Proxyless as NNIProxyless, no_default_hook

from ..._mixed import keeping_attributes
from ..._search_step import SearchOptions
from ...checkpoint import check_readable
from .cell import ProxylessMixedCell
from .depth import ProxylessMixedDepth, nni_depth_hook
from .layers import ProxylessMixedInput, ProxylessMixedLayer, ProxylessMixedRepeat, suppress_already_mutated
from .lightning import ProxylessLightningModule
from .mixed import NATIVE_MIXED_OPERATIONS, MixedOpProxylessPolicy

__all__ = ['Proxyless']


class Proxyless(NNIProxyless):
    """Drop-in for ``nni.nas.strategy.Proxyless`` of NNI 3.0, backed by :class:`proxyless_rs.ProxylessLightningModule`.

    NNI 3.0's keyword arguments: ``arc_learning_rate``, ``gradient_clip_val``, ``log_prob_every_n_step``,
    ``warmup_epochs``, ``penalty`` (a dict or an ``ExpectationProfilerPenalty``; here it has a gradient in
    alpha), ``mutation_hooks``; and proxyless_rs's: ``exact``, ``mode``, ``arch_update_every``,
    ``latency_table``, ``latency_weight``, ``latency_form``, ``latency_target``. ``LayerChoice``,
    ``InputChoice`` and ``Repeat`` with a categorical depth are searched, as by NNI 3.0, and value
    choices in NNI's mixed operations (``MutableConv2d``, ``MutableLinear``, ``MutableBatchNorm2d``,
    ``MutableLayerNorm``, ``MutableMultiheadAttention``, and those a space registers), which NNI 3.0's
    Proxyless refuses (:mod:`proxyless_rs._mixed`). With
    ``latency_limit``, the export is the most probable architecture within the limit.
    ``export_top_models()`` / ``list_models()`` freeze the model space with the most probable choices
    (NNI 3.0's layers export a random draw). ``resume``, a Lightning checkpoint of an earlier run of
    the same search, continues it: the same alphas, weights and export as the run never interrupted.
    """

    def __init__(self, *, resume: str | None = None, **kwargs: Any):
        # A Lightning checkpoint of an earlier run of this search to resume from (what NNI 3.0's
        # own load_state_dict({'ckpt_path': ...}) sets, given before the experiment runs).
        self.resume = resume
        # proxyless_rs's options (SearchOptions) are checked now and go to the one-shot module;
        # the rest, warmup_epochs included, are NNI 3.0's.
        options = SearchOptions.split(kwargs, keep=('warmup_epochs',))
        self.search_options = SearchOptions.of(**options)
        self.proxyless_kwargs = options
        super().__init__(**kwargs)

    def _run(self) -> None:
        if self.resume is not None:
            check_readable(self.resume)
            self.load_state_dict({'ckpt_path': self.resume})
        super()._run()

    def mutate_model(self, model):  # noqa: ANN001, ANN201 (NNI's signature)
        # NNI 3.0's differentiable strategies refuse any mutable that is not a categorical choice with
        # a bare TypeError; say which, and why it cannot be searched one-shot.
        from nni.mutable import Categorical, CategoricalMultiple

        for label, mutable in model.simplify().items():
            if not isinstance(mutable, (Categorical, CategoricalMultiple)):
                raise TypeError(
                    f'proxyless_rs.strategy.Proxyless: {type(model).__name__} holds {label!r}, a '
                    f'{type(mutable).__name__}, which is not a categorical choice: ProxylessNAS, like every one-shot '
                    'strategy of NNI 3.0, searches categorical choices with an architecture parameter each, and a '
                    'constraint on the architecture (such as NasBench101 cells\' limit on their edges, '
                    'max_num_edges) is none; its exports could break it, and NNI 3.0 would refuse them. '
                    'Search the space with a multi-trial strategy, or under NNI 2.10, whose NasBench101 cell '
                    'has no such constraint object (proxyless_rs searches it there and leaves the edge limit '
                    'unchecked, as NNI 2.10 does).')
        return super().mutate_model(model)

    def configure_oneshot_module(self, training_module) -> ProxylessLightningModule:
        return ProxylessLightningModule(
            training_module, arc_learning_rate=self.arc_learning_rate, gradient_clip_val=self.gradient_clip_val,
            log_prob_every_n_step=self.log_prob_every_n_step, warmup_epochs=self.warmup_epochs, penalty=self.penalty,
            **self.proxyless_kwargs)

    def default_mutation_hooks(self) -> list[MutationHook]:
        mixed = [keeping_attributes(operation.mutate) for operation in NATIVE_MIXED_OPERATIONS]
        return [suppress_already_mutated, ProxylessMixedCell.mutate, ProxylessMixedLayer.mutate,
                ProxylessMixedInput.mutate, ProxylessMixedRepeat.mutate, ProxylessMixedDepth.mutate, *mixed,
                no_default_hook]

    def run_hook(self, hook: MutationHook, name: str, module, memo: dict[str, Any]):
        # NNI 3.0's DARTS.run_hook, with ProxylessNAS's policy for the mixed operations (NNI's own and a
        # space's: AutoFormer's hooks build them with the policy given here), the layers' mode and the
        # module's name (for errors) added to the mutation keyword arguments.
        if not memo.get('_validated'):
            memo.update(self._arch_parameters)
            memo['_validated'] = True
        hook = nni_depth_hook(hook)  # NNI's NDS spaces add their own depth hook for DARTS-like strategies
        kwargs = {'mixed_op_sampling': MixedOpProxylessPolicy, 'softmax': self.configure_softmax(),
                  'proxyless_mode': self.search_options.mode, 'proxyless_module_name': name}
        return hook(module, name, memo, kwargs)

    def export_latency(self) -> float:
        """The latency (ms) the latency table predicts for the exported architecture."""
        return self.oneshot_module.export_latency()

    def list_models(self, sort: bool = True, limit: int | None = 1) -> Iterator[Any]:
        """The model space frozen with each of the ``limit`` most probable architectures within the
        cost limits, best first (``NasExperiment.export_top_models(top_k)`` asks for them; NNI
        3.0's one-shot strategies give one and warn). Their probabilities and predicted costs:
        ``strategy.oneshot_module.export_top(limit)``."""
        if limit is None or limit == 1:
            yield from super().list_models(sort=sort, limit=1)
            return
        self.oneshot_module.set_model(self.supernet)
        for ranked in self.oneshot_module.export_top(limit):
            yield self.model_space.freeze(ranked.architecture)
