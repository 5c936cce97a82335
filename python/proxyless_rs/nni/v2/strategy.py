"""``proxyless_rs.strategy.Proxyless`` for NNI 2.10: its one-shot ProxylessNAS strategy on proxyless_rs's layers."""

from __future__ import annotations

from typing import Any

# NNI's strategy package must finish initialising before its one-shot strategies are imported
# directly: the other order leaves nni.retiarii.strategy.Proxyless bound to a failed-import stub.
import nni.nas.strategy  # noqa: F401  (import order matters)
from nni.nas.evaluator.pytorch.lightning import Lightning
from nni.nas.oneshot.pytorch.strategy import Proxyless as NNIProxyless

from ...checkpoint import check_readable
from .lightning import ProxylessLightningModule

__all__ = ['Proxyless']


class Proxyless(NNIProxyless):
    """Drop-in for ``nni.retiarii.strategy.Proxyless``: same keyword arguments, same dataloader handling
    (training and validation loaders combined into one ``{'train', 'val'}`` batch), same
    ``export_top_models()``, backed by :class:`proxyless_rs.ProxylessLightningModule`.

    Keyword arguments go to that module: ``mutation_hooks``, ``arc_learning_rate``,
    ``gradient_clip_val`` as in NNI, and ``exact``, ``mode``, ``warmup_epochs``, ``arch_update_every``,
    ``latency_table``, ``latency_weight``, ``latency_form``, ``latency_target``, ``latency_limit``,
    ``latency_limit_weight``, ``costs`` with ``cost_spec`` (several costs, each with its loss form,
    weight or hard limit; see :func:`proxyless_rs.costs.cost_loss`) (see the module). ``resume``, a
    Lightning checkpoint of an earlier run of the same search, continues it: the same alphas,
    weights and export as the run never interrupted (its random streams are in the checkpoint).
    """

    def __init__(self, *, resume: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.oneshot_module = ProxylessLightningModule
        # A Lightning checkpoint of an earlier run of this search (``last.ckpt`` of its
        # ModelCheckpoint) to resume from, as the paper's code has --resume (NNI 3.0's strategies
        # take ``load_state_dict({'ckpt_path': ...})`` for the same).
        self.resume = resume

    def export_latency(self) -> float:
        """The latency (ms) the latency table predicts for the exported architecture."""
        if self.model is None:
            raise RuntimeError('One-shot strategy needs to be run before export.')
        return self.model.export_latency()

    def export_top_models(self, top_k: int = 1) -> list[Any]:
        """The ``top_k`` most probable architectures within the cost limits, best first (NNI 2.10's
        one-shot strategies export one and warn). The first is NNI's export (``export()``); their
        probabilities and predicted costs: ``strategy.model.export_top(top_k)``."""
        if self.model is None:
            raise RuntimeError('One-shot strategy needs to be run before export.')
        if top_k == 1:
            return [self.model.export()]
        return [ranked.architecture for ranked in self.model.export_top(top_k)]

    def run(self, base_model, applied_mutators):
        evaluator = getattr(base_model, 'evaluator', None)
        if not isinstance(evaluator, Lightning):
            raise TypeError('proxyless_rs.strategy.Proxyless needs a Lightning evaluator '
                            '(nni.retiarii.evaluator.pytorch.lightning.Lightning, e.g. Classification or Regression), '
                            f'got {type(evaluator).__name__}.')
        missing = [name for name in ('train_dataloaders', 'val_dataloaders') if getattr(evaluator, name) is None]
        if missing:
            raise ValueError(f'proxyless_rs.strategy.Proxyless needs {" and ".join(missing)} on the evaluator: '
                             'ProxylessNAS trains the weights on training batches and the architecture on '
                             'validation batches.')
        if self.resume is None:
            return super().run(base_model, applied_mutators)
        check_readable(self.resume)
        if applied_mutators:
            raise ValueError('Mutator is not empty: run the one-shot strategy with the oneshot execution engine.')
        # NNI 2.10's run, with the checkpoint handed to fit.
        self.attach_model(base_model)
        train_loader, val_loader = self.preprocess_dataloader(evaluator.train_dataloaders, evaluator.val_dataloaders)
        evaluator.trainer.fit(self.model, train_loader, val_loader, ckpt_path=self.resume)
