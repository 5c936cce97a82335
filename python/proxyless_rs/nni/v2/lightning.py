"""proxyless_rs's one-shot Lightning module for NNI 2.10: NNI 2.10's ``ProxylessLightningModule``
with proxyless_rs's layers and the step of ``_search_step``."""

from __future__ import annotations

import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn
from nni.nas.oneshot.pytorch.base_lightning import MutationHook, no_default_hook as nni_no_default_hook
from nni.nas.oneshot.pytorch.differentiable import ProxylessLightningModule as NNIProxylessLightningModule

from ..._choices import beyond_nni
from ..._mixed import keeping_attributes
from ..._search_step import ProxylessSearchStep, SearchOptions
from .cell import ProxylessMixedCell
from .depth import ProxylessMixedDepth, nni_depth_hook
from .layers import ProxylessMixedInput, ProxylessMixedLayer, ProxylessMixedRepeat, register_repeat_layers
from .mixed import NATIVE_MIXED_OPERATIONS, MixedOpProxylessPolicy

__all__ = ['ProxylessLightningModule', 'unsupported_primitive_hook']

# What NNI 2.10's architecture optimizer uses, whatever arc_learning_rate says.
NNI_ARC_LEARNING_RATE = 3.0E-4


def unsupported_primitive_hook(module: nn.Module, name: str, memo: dict[str, Any],
                               mutate_kwargs: dict[str, Any]) -> bool:
    """The last mutation hook: refuses, by name, any mutation primitive the hooks before it left."""
    try:
        return nni_no_default_hook(module, name, memo, mutate_kwargs)
    except TypeError as err:
        raise TypeError(f'ProxylessNAS (proxyless_rs) supports LayerChoice, InputChoice, Repeat, Cell and value '
                        f"choices in NNI's mixed operations; module {name!r} of type {type(module).__name__} is not "
                        f'supported ({err}).') from err


class ProxylessLightningModule(ProxylessSearchStep, NNIProxylessLightningModule):
    """Drop-in for NNI 2.10's ``ProxylessLightningModule``, building proxyless_rs's layers.

    Mutation hooks turn ``LayerChoice``, ``InputChoice`` and a ``Repeat`` with a depth choice into
    :class:`proxyless_rs.ProxylessMixedLayer`, :class:`proxyless_rs.ProxylessMixedInput` and
    :class:`proxyless_rs.ProxylessMixedRepeat` (NNI 2.10's own strategies refuse ``Repeat``), and give
    NNI's mixed operations (value choices in ``Conv2d``, ``Linear``, ``BatchNorm2d``, ``LayerNorm``,
    ``MultiheadAttention``) ProxylessNAS's sampling policy (:mod:`proxyless_rs._mixed`); anything else
    that NNI would mutate is refused with a ``TypeError`` naming the module. Each training step
    is NNI's: an architecture step on the validation batch (resample, forward, backward, architecture
    optimizer), then a weight step on the training batch (the step is ``proxyless_rs._search_step``'s,
    with ``warmup_epochs`` and ``arch_update_every``).

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
                 arc_learning_rate: float = 3.0E-4, gradient_clip_val: float | None = None, **options: Any):
        """``options``: those of :class:`proxyless_rs._search_step.SearchOptions`."""
        self._init_search(SearchOptions.of(**options))
        exact = self.exact
        if exact and arc_learning_rate != NNI_ARC_LEARNING_RATE:
            warnings.warn(f'exact=True reproduces NNI 2.10, whose architecture optimizer ignores arc_learning_rate '
                          f'and always uses {NNI_ARC_LEARNING_RATE}: arc_learning_rate={arc_learning_rate} is ignored '
                          'too. Drop exact=True to use it.', UserWarning, stacklevel=2)
        # NNI's docs pair its hub's NDS depth hooks with ProxylessNAS: ours take their place.
        mutation_hooks = None if mutation_hooks is None else [nni_depth_hook(hook) for hook in mutation_hooks]
        super().__init__(inner_module, mutation_hooks=mutation_hooks, arc_learning_rate=arc_learning_rate,
                         gradient_clip_val=gradient_clip_val)
        beyond = beyond_nni(self.model) if exact else []
        if beyond:
            raise ValueError("exact=True reproduces NNI 2.10's ProxylessNAS step for step, and NNI 2.10's ProxylessNAS "
                             f"searches no {' nor '.join(beyond)}; this space has some: drop exact=True")
        self._check_costs()

    def default_mutation_hooks(self) -> list[MutationHook]:
        mixed = [keeping_attributes(operation.mutate) for operation in NATIVE_MIXED_OPERATIONS]
        return [register_repeat_layers, ProxylessMixedCell.mutate, ProxylessMixedLayer.mutate,
                ProxylessMixedInput.mutate, ProxylessMixedRepeat.mutate, ProxylessMixedDepth.mutate, *mixed,
                unsupported_primitive_hook]

    def mutate_kwargs(self) -> dict[str, Any]:
        return {**super().mutate_kwargs(), 'mixed_op_sampling': MixedOpProxylessPolicy, 'proxyless_mode': self.mode}

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

    def _mixed_modules(self) -> list[Any]:
        return list(self.nas_modules)

    def _model_root(self) -> Any:
        return self.model

    def _inner_training_step(self, batch: Any, batch_idx: int) -> Any:
        return self.model.training_step(batch, batch_idx)

    def _log_this_step(self, batch_idx: int) -> bool:
        """Whether Lightning writes logs at this step (its ``log_every_n_steps`` cadence)."""
        connector = getattr(self.trainer, '_logger_connector', None)
        return bool(getattr(connector, 'should_update_logs', True))

    def _log_probabilities(self) -> None:
        self.log_dict({'prob/' + k: v for k, v in self.export_probs().items()})
