"""NNI's one-shot ProxylessNAS Lightning module, with proxyless_rs's layers and a leaner step."""

from __future__ import annotations

import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.optim as optim
from nni.nas.oneshot.pytorch.base_lightning import MutationHook, no_default_hook as nni_no_default_hook
from nni.nas.oneshot.pytorch.differentiable import ProxylessLightningModule as NNIProxylessLightningModule

from .latency import LatencyTable, expected_latency, latency_loss, predicted_latency
from .supermodule import ProxylessMixedInput, ProxylessMixedLayer, no_arch_grad, rescale_two_path

__all__ = ['ProxylessLightningModule', 'unsupported_primitive_hook']

# What NNI 2.10's architecture optimizer uses, whatever arc_learning_rate says.
NNI_ARC_LEARNING_RATE = 3.0E-4


def unsupported_primitive_hook(module: nn.Module, name: str, memo: dict[str, Any],
                               mutate_kwargs: dict[str, Any]) -> bool:
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

    Beyond NNI (ProxylessNAS paper): ``mode='two'`` builds the layers in two-path mode and rescales
    the involved logits after every architecture step (:func:`proxyless_rs.rescale_two_path`);
    ``latency_table`` (a :class:`proxyless_rs.LatencyTable`) with ``latency_weight`` > 0 adds the
    expected latency to the architecture step's loss in ``latency_form`` ``'log'``
    (``loss + weight * log E[LAT]``) or ``'mul'`` (``loss * (E[LAT] / latency_target) ** weight``),
    and :meth:`export_latency` gives the exported architecture's predicted latency. Neither exists
    in NNI, so neither combines with ``exact=True``.
    """

    def __init__(self, inner_module: pl.LightningModule, mutation_hooks: list[MutationHook] | None = None,
                 arc_learning_rate: float = 3.0E-4, gradient_clip_val: float | None = None, exact: bool = False,
                 mode: str = 'full', latency_table: LatencyTable | dict | None = None, latency_weight: float = 0.0,
                 latency_form: str = 'log', latency_target: float | None = None):
        # An unknown mode is refused by the layers as the mutation hooks build them.
        if exact and (mode != 'full' or latency_weight):
            raise ValueError('exact=True reproduces NNI step for step; NNI has no two-path mode or latency loss')
        if exact and arc_learning_rate != NNI_ARC_LEARNING_RATE:
            warnings.warn(f'exact=True reproduces NNI 2.10, whose architecture optimizer ignores arc_learning_rate '
                          f'and always uses {NNI_ARC_LEARNING_RATE}: arc_learning_rate={arc_learning_rate} is ignored '
                          'too. Drop exact=True to use it.', UserWarning, stacklevel=2)
        self.exact = exact
        self.mode = mode
        self.latency_table = None if latency_table is None else LatencyTable(latency_table)
        self.latency_weight = latency_weight
        self.latency_form = latency_form
        self.latency_target = latency_target
        super().__init__(inner_module, mutation_hooks=mutation_hooks, arc_learning_rate=arc_learning_rate,
                         gradient_clip_val=gradient_clip_val)
        if self.latency_table is not None:
            self.latency_table.check(self.model)
            # Refuse a bad form, weight or target now rather than at the first step.
            latency_loss(torch.zeros(()), torch.ones(()), latency_form, latency_weight, latency_target)
        elif latency_weight:
            raise ValueError('latency_weight is set but no latency_table was given')

    def default_mutation_hooks(self) -> list[MutationHook]:
        return [ProxylessMixedLayer.mutate, ProxylessMixedInput.mutate, unsupported_primitive_hook]

    def mutate_kwargs(self) -> dict[str, Any]:
        return {**super().mutate_kwargs(), 'proxyless_mode': self.mode}

    def setup(self, stage: str = None):  # type: ignore[assignment]
        """Under a multi-process strategy (Lightning's DDP), prepares the data-parallel search
        (:func:`proxyless_rs.distributed.setup`) before Lightning wraps the module in DDP."""
        import torch.distributed as dist

        from . import distributed

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and \
                getattr(self, '_distributed_search', None) is None:
            self._distributed_search = distributed.setup(self)
        return super().setup(stage)

    def configure_architecture_optimizers(self):
        """NNI's architecture optimizer (Adam, betas (0.5, 0.999), weight decay 1e-3), at
        ``arc_learning_rate``: NNI 2.10 accepts that argument but always uses 3e-4, its default, and
        so does ``exact=True`` (NNI's own method)."""
        if self.exact:
            return super().configure_architecture_optimizers()
        params = list({id(p): p for m in self.nas_modules for p in m.parameters(arch=True)}.values())
        if not params:
            raise ValueError('No architecture parameters found. Nothing to search.')
        return torch.optim.Adam(params, self.arc_learning_rate, betas=(0.5, 0.999), weight_decay=1.0E-3)

    def export_latency(self) -> float:
        """The latency (ms) that ``latency_table`` predicts for :meth:`export`'s architecture."""
        if self.latency_table is None:
            raise ValueError('export_latency needs a latency_table')
        return predicted_latency(self.export(), self.model, self.latency_table)

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
        expected = None
        if self.latency_table is not None and self.latency_weight:
            expected = expected_latency(self.model, self.latency_table)
            arc_step_loss = latency_loss(arc_step_loss, expected, self.latency_form, self.latency_weight,
                                         self.latency_target)
        self.manual_backward(arc_step_loss)
        arc_optim.step()
        if self.mode == 'two':
            rescale_two_path(*self.nas_modules)

        # Weight step, on a training batch: no alpha-gradient work.
        self.resample()
        with no_arch_grad(*self.nas_modules):
            loss_and_metrics = self.model.training_step(trn_batch, 2 * batch_idx + 1)
            w_step_loss = loss_and_metrics['loss'] if isinstance(loss_and_metrics, dict) else loss_and_metrics
            self.advance_optimization(w_step_loss, batch_idx, self.gradient_clip_val)

        self.advance_lr_schedulers(batch_idx)
        if self._logs_this_step():
            self.log_dict({'prob/' + k: v for k, v in self.export_probs().items()})
            if expected is not None:
                self.log('latency/expected_ms', expected.item())
        return loss_and_metrics

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes logs at this step (its ``log_every_n_steps`` cadence)."""
        connector = getattr(self.trainer, '_logger_connector', None)
        return bool(getattr(connector, 'should_update_logs', True))
