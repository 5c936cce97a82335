"""NNI's one-shot ProxylessNAS Lightning module, with proxyless_rs's layers and a leaner step."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch.nn as nn
import torch.optim as optim
from nni.nas.oneshot.pytorch.base_lightning import MutationHook
from nni.nas.oneshot.pytorch.base_lightning import no_default_hook as nni_no_default_hook
from nni.nas.oneshot.pytorch.differentiable import ProxylessLightningModule as NNIProxylessLightningModule

from .supermodule import ProxylessMixedInput, ProxylessMixedLayer, no_arch_grad

__all__ = ['ProxylessLightningModule', 'unsupported_primitive_hook']


def unsupported_primitive_hook(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]) -> bool:
    """The last mutation hook: refuses, by name, any mutation primitive the hooks before it left."""
    try:
        return nni_no_default_hook(module, name, memo, mutate_kwargs)
    except TypeError as err:
        raise TypeError(f'ProxylessNAS (proxyless_rs) supports LayerChoice and InputChoice only; module {name!r} '
                        f'of type {type(module).__name__} is not supported ({err}).') from err


class ProxylessLightningModule(NNIProxylessLightningModule):
    """Drop-in for NNI 2.10's ``ProxylessLightningModule``, building proxyless_rs's layers.

    Mutation hooks turn ``LayerChoice`` and ``InputChoice`` into :class:`proxyless_rs.ProxylessMixedLayer`
    and :class:`proxyless_rs.ProxylessMixedInput`; anything else that NNI would mutate is refused with
    a ``TypeError`` naming the module. Each training step is NNI's: an architecture step on the
    validation batch (resample, forward, backward, architecture optimizer), then a weight step on
    the training batch.

    By default the weight step runs under :func:`proxyless_rs.no_arch_grad`: NNI's hook also
    evaluates every unsampled candidate there to compute alpha gradients that are never used by
    the architecture optimizer (its ``zero_grad`` discards them). What differs without that work:
    the unsampled candidates' forwards no longer update their BatchNorm running statistics or
    draw random numbers; and where the weight optimizer also holds the alphas (NNI's default
    evaluators pass ``self.parameters()``, which includes them), the alphas are no longer moved by
    the weight optimizer with training-batch gradients, only by the architecture optimizer.
    Candidate probabilities are logged under NNI's keys (``prob/<label>/<choice>``) at
    Lightning's ``log_every_n_steps`` cadence instead of at every step.

    ``exact=True`` runs NNI's own step instead (alpha-gradient work and probability logging at every
    step), which reproduces NNI's sampled architectures and alphas under the same seeds.
    """

    def __init__(self, inner_module: pl.LightningModule, mutation_hooks: list[MutationHook] | None = None,
                 arc_learning_rate: float = 3.0E-4, gradient_clip_val: float | None = None, exact: bool = False):
        self.exact = exact
        super().__init__(inner_module, mutation_hooks=mutation_hooks, arc_learning_rate=arc_learning_rate,
                         gradient_clip_val=gradient_clip_val)

    def default_mutation_hooks(self) -> list[MutationHook]:
        return [ProxylessMixedLayer.mutate, ProxylessMixedInput.mutate, unsupported_primitive_hook]

    def training_step(self, batch, batch_idx):
        if self.exact:
            return super().training_step(batch, batch_idx)

        arc_optim = self.architecture_optimizers()
        if not isinstance(arc_optim, optim.Optimizer):
            raise TypeError(f'Expect arc_optim to be a single Optimizer, but found: {arc_optim}')
        trn_batch, val_batch = batch['train'], batch['val']

        # Architecture step, on a validation batch.
        self.resample()
        arc_optim.zero_grad()
        arc_step_loss = self.model.training_step(val_batch, 2 * batch_idx)
        if isinstance(arc_step_loss, dict):
            arc_step_loss = arc_step_loss['loss']
        self.manual_backward(arc_step_loss)
        arc_optim.step()

        # Weight step, on a training batch: no alpha-gradient work.
        self.resample()
        with no_arch_grad(*self.nas_modules):
            loss_and_metrics = self.model.training_step(trn_batch, 2 * batch_idx + 1)
            w_step_loss = loss_and_metrics['loss'] if isinstance(loss_and_metrics, dict) else loss_and_metrics
            self.advance_optimization(w_step_loss, batch_idx, self.gradient_clip_val)

        self.advance_lr_schedulers(batch_idx)
        if self._logs_this_step():
            self.log_dict({'prob/' + k: v for k, v in self.export_probs().items()})
        return loss_and_metrics

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes logs at this step (its ``log_every_n_steps`` cadence)."""
        connector = getattr(self.trainer, '_logger_connector', None)
        return bool(getattr(connector, 'should_update_logs', True))
