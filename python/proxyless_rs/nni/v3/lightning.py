"""proxyless_rs's one-shot Lightning module for NNI 3.0: NNI 3.0's ``DartsLightningModule`` (what its
``Proxyless`` strategy runs) with the step of ``_search_step`` and a penalty that has a gradient."""

from __future__ import annotations

from typing import Any, cast

import pytorch_lightning as pl
import torch
import torch.nn as nn
from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty

from ..._choices import beyond_nni, choices
from ..._layer import ProxylessLayer
from ..._search_step import ProxylessSearchStep, SearchOptions
from .layers import ProxylessMixedInput, ProxylessMixedRepeat

__all__ = ['ProxylessLightningModule', 'probabilities_with_grad']


def probabilities_with_grad(modules) -> dict[str, dict[Any, torch.Tensor]]:
    """What ``export_probs()`` gives (``{label: {choice: probability}}``), as tensors that carry the
    gradient of ``softmax(alpha)``: NNI 3.0 passes ``export_probs()``'s Python floats to its penalty,
    which then gives alpha no gradient at all."""
    probs: dict[str, dict[Any, torch.Tensor]] = {}
    for module in modules:
        if isinstance(module, ProxylessMixedRepeat):
            label = module.depth_choice.label
            if label not in probs:
                probs[label] = {module.min_depth + k: p for k, p in enumerate(module.depth_probs())}
            continue
        # A layer (its candidates by name; an input choice's by index), or each value choice of a
        # mixed operation.
        for choice in choices(module):
            if choice.label not in probs:
                weights = choice.probabilities()
                names = range(len(weights)) if isinstance(choice, ProxylessMixedInput) else choice.names
                probs[choice.label] = dict(zip(names, weights))
    return probs


class ProxylessLightningModule(ProxylessSearchStep, DartsLightningModule):
    """Drop-in for the one-shot module of NNI 3.0's ``Proxyless`` strategy, on proxyless_rs's layers.

    NNI 3.0's keyword arguments (``arc_learning_rate``, honoured; ``gradient_clip_val``;
    ``log_prob_every_n_step``; ``warmup_epochs``; ``penalty``, an ``ExpectationProfilerPenalty``) and
    proxyless_rs's (``exact``, ``mode``, ``latency_table``, ``latency_weight``, ``latency_form``,
    ``latency_target``, ``arch_update_every``). The step is ``_search_step``'s: no alpha work in the
    weight step nor during the warm-up, where NNI 3.0 evaluates every candidate at every step. The
    penalty is computed from :func:`probabilities_with_grad`, so it moves alpha (NNI 3.0's does not:
    its ``mul`` form only rescales the loss, its ``add`` form is a constant). ``exact=True`` runs NNI
    3.0's own step, penalty included.
    """

    def __init__(self, training_module: pl.LightningModule, *, arc_learning_rate: float = 3.0E-4,
                 gradient_clip_val: float | None = None, log_prob_every_n_step: int = 10, warmup_epochs: int = 0,
                 penalty: ExpectationProfilerPenalty | None = None, **options: Any):
        """``options``: those of :class:`proxyless_rs._search_step.SearchOptions` (``warmup_epochs`` is
        NNI 3.0's own and goes to both)."""
        super().__init__(training_module, arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         log_prob_every_n_step=log_prob_every_n_step, warmup_epochs=warmup_epochs, penalty=penalty)
        self._init_search(SearchOptions.of(warmup_epochs=warmup_epochs, **options))

    def arch_parameters(self) -> list[torch.nn.Parameter]:
        """The alphas of every searched module, each once, in module order: NNI 3.0 collects them
        through a set, whose order changes from process to process, so that the architecture
        optimizer's state in a checkpoint went to other alphas when a search resumed elsewhere."""
        found: dict[int, torch.nn.Parameter] = {}
        for module in self.supernet_modules():
            if hasattr(module, 'arch_parameters'):
                for p in module.arch_parameters():
                    found.setdefault(id(p), p)
        return list(found.values())

    def on_fit_start(self):
        self._check_costs()
        beyond = beyond_nni(*self.supernet_modules()) if self.exact else []
        if beyond:
            raise ValueError("exact=True reproduces NNI 3.0's Proxyless step for step, and NNI 3.0's Proxyless "
                             f"searches no {' nor '.join(beyond)}; this space has some: drop exact=True")
        if self.exact:
            self._count_grad_forwards()
        return super().on_fit_start()

    def _count_grad_forwards(self) -> None:
        """``exact=True``: records which layers ran a forward with grad mode on since the last backward
        (what :meth:`manual_backward` gives NNI 3.0's zero alpha gradient), by a forward pre-hook on each."""
        ran = self.__dict__.setdefault('_ran_with_grad', set())
        for handle in self.__dict__.pop('_grad_forward_hooks', []):
            handle.remove()

        def record(module, args):
            if torch.is_grad_enabled():
                ran.add(id(module))

        self.__dict__['_grad_forward_hooks'] = [
            cast(nn.Module, module).register_forward_pre_hook(record) for module in self.supernet_modules()
            if isinstance(module, ProxylessLayer)]

    def _mixed_modules(self) -> list[Any]:
        return list(self.supernet_modules())

    def _model_root(self) -> Any:
        return self.training_module

    def _inner_training_step(self, batch: Any, batch_idx: int) -> Any:
        return self.training_module.training_step(batch, batch_idx)

    def _log_this_step(self, batch_idx: int) -> bool:
        return batch_idx % self.log_prob_every_n_step == 0

    def _log_probabilities(self) -> None:
        self.log_probs(self.export_probs())

    def _penalized(self, loss: torch.Tensor) -> torch.Tensor:
        if self.penalty is None:
            return loss
        loss, details = self.penalty(loss, probabilities_with_grad(self.supernet_modules()))
        self.log_dict({f'penalty/{k}': float(v) for k, v in details.items()})
        return loss

    def supernet_modules(self):
        """NNI 3.0's walk of the module tree, done once: the supernet does not change while it trains,
        and NNI walks it at every resample (twice a step) and every log (~9% of a digits search)."""
        cached = self.__dict__.get('_supernet_modules')
        if cached is None:
            cached = self.__dict__['_supernet_modules'] = list(super().supernet_modules())
        return iter(cached)

    def set_model(self, model):
        self.__dict__.pop('_supernet_modules', None)
        return super().set_model(model)

    def manual_backward(self, loss, *args, **kwargs):
        if not self.exact:
            return super().manual_backward(loss, *args, **kwargs)
        layers = [m for m in self.supernet_modules() if isinstance(m, ProxylessLayer)]
        super().manual_backward(loss, *args, **kwargs)
        # NNI 3.0's autograd Function is in the graph of every layer that ran (an input choice's
        # Function takes all its inputs), runs with zero output gradients where none reached it, and
        # gives its alpha a zero gradient, which Adam's momentum and weight decay then act on; our
        # taps run only where a gradient arrives. Give the alpha of a layer that ran NNI 3.0's zero.
        ran = self.__dict__.setdefault('_ran_with_grad', set())
        for module in layers:
            if id(module) in ran and module._arch_alpha.grad is None:
                module._arch_alpha.grad = torch.zeros_like(module._arch_alpha)
        ran.clear()

    def on_train_epoch_start(self):
        if self.exact:
            return super().on_train_epoch_start()
        # NNI 3.0 also sets requires_grad off on the alphas during the warm-up; the step here does no
        # architecture work then, so they are left as they are.
        return super(DartsLightningModule, self).on_train_epoch_start()
