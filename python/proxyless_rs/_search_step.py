"""The training step of proxyless_rs's one-shot Lightning modules, shared by the NNI 2.10 and NNI 3.0
glue (``nni.v2.lightning``, ``nni.v3.lightning``), which say where the inner module and the mixed
modules are.

One step is NNI's: an architecture step on the validation batch (resample, forward, backward,
architecture optimizer), then a weight step on the training batch. What differs from NNI, and why:

- the weight step runs under :func:`proxyless_rs.no_arch_grad`: NNI evaluates every unsampled
  candidate there to compute alpha gradients that the next architecture step's ``zero_grad``
  discards (NNI 3.0's ``_ProxylessFunction`` does so even in every step, warm-up included);
- the architecture step runs under :func:`proxyless_rs.no_weight_grad`: its backward computes
  alpha's gradient only, where NNI also computes every sampled weight's, which its weight step's
  ``zero_grad`` then discards;
- during the first ``warmup_epochs`` epochs there is no architecture step and no alpha work at all
  (the paper's code warms up the weights for 40 of 120 epochs);
- with ``arch_update_every`` = k > 1 (the paper code's ``grad_update_arch_step``), the architecture
  step runs every k-th step only;
- cost terms enter the architecture loss with a gradient in alpha, through one
  :func:`proxyless_rs.costs.cost_loss` call over ``costs`` / ``cost_spec`` (the ``latency_*`` options
  are the ``'latency'`` cost, translated once: :func:`proxyless_rs.costs.costs_with_latency`); a limit adds a
  penalty that is zero below it, and :meth:`export` returns the exact most probable architecture
  within every limit (:func:`proxyless_rs.constrained_export`); NNI 3.0's profiler penalty gets
  probabilities that carry alpha's gradient;
- ``exact=True`` runs NNI's own step instead, to reproduce NNI's sampled architectures and alphas.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.optim as optim

from ._choices import Resampler, no_arch_grad, no_weight_grad, rescale_two_path
from ._layer import ProxylessLayer
from ._lightning_compat import counted_optimizer_step
from ._nni_version import NNI_NAME
from ._site import SiteHolder
from .checkpoint import rng_state, set_rng_state
from .hardware.export import RankedArchitecture, constrained_export, predicted_latency, top_architectures
from .hardware.loss import LATENCY_OPTIONS, CostSpec, cost_loss, costs_with_latency
from .hardware.tables import CostTable

# Each search module's blocks (ProxylessSearchStep._block), dropped with the module.
_BLOCKS: weakref.WeakKeyDictionary[Any, dict[str, tuple[list[weakref.ref], Any]]] = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """proxyless_rs's options of the search, beyond NNI's own, the same for both NNI versions' one-shot
    modules and strategies (which take them as keyword arguments and build these with :meth:`of`).

    ``exact``: run NNI's own step (its draws and alphas under the same seeds); none of the others
    then. ``mode``: ``'full'`` or ``'two'`` (two-path, rescaled after every architecture step).
    ``warmup_epochs``: epochs of weight steps only. ``arch_update_every``: the architecture step on
    every k-th step. ``costs``: the table of every cost the search knows (latency is the
    ``'latency'`` cost), with ``cost_spec``, what each adds to the architecture loss: its loss form,
    weight or limit (:func:`proxyless_rs.costs.cost_loss`); a limit also makes the export the most
    probable architecture within it.
    """

    exact: bool = False
    mode: str = 'full'
    warmup_epochs: int = 0
    arch_update_every: int = 1
    costs: CostTable | None = None
    cost_spec: dict[str, CostSpec] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, **options: Any) -> SearchOptions:
        """The options from the strategies' keyword arguments, where the ``latency_*`` ones
        (:data:`LATENCY_OPTIONS`) are another spelling of the ``'latency'`` cost
        (:func:`proxyless_rs.costs.latency_cost`) and ``costs`` may be any table :class:`CostTable` takes."""
        latency = {name: options.pop(name) for name in LATENCY_OPTIONS if name in options}
        costs, spec = costs_with_latency(options.pop('costs', None), options.pop('cost_spec', None), **latency)
        return cls(**options, costs=costs, cost_spec=spec)

    @classmethod
    def split(cls, kwargs: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
        """Takes this class's options (its fields and :data:`LATENCY_OPTIONS`) out of ``kwargs`` (but
        those in ``keep``) and returns them."""
        names = ({field.name for field in dataclasses.fields(cls)} | set(LATENCY_OPTIONS)) - set(keep)
        return {name: kwargs.pop(name) for name in list(kwargs) if name in names}

    def __post_init__(self) -> None:
        # An unknown mode is refused by the layers as the mutation hooks build them.
        if self.exact and (self.mode != 'full' or self.arch_update_every != 1 or self.costs is not None):
            raise ValueError('exact=True reproduces NNI step for step; NNI has no two-path mode, latency loss, '
                             'latency limit, costs or arch_update_every')
        if self.warmup_epochs < 0 or self.arch_update_every < 1:
            raise ValueError(f'warmup_epochs must be >= 0 and arch_update_every >= 1, got {self.warmup_epochs} and '
                             f'{self.arch_update_every}')


def _is_alpha_key(key: str) -> bool:
    """Whether a state dict key is a choice's alpha: a layer's ``..._arch_alpha``, a mixed
    operation's ``..._arch_alpha.<label>``."""
    parts = key.split('.')
    return parts[-1] == '_arch_alpha' or (len(parts) > 1 and parts[-2] == '_arch_alpha')


class ProxylessSearchStep:
    """Mixin for a one-shot Lightning module of NNI's: the step described in the module doc."""

    exact: bool
    mode: str
    warmup_epochs: int
    arch_update_every: int
    costs: CostTable | None
    cost_spec: dict[str, CostSpec]
    gradient_clip_val: float | None

    if TYPE_CHECKING:  # what the host, NNI's one-shot Lightning module (either version), provides
        trainer: Any

        def architecture_optimizers(self) -> Any: ...

        def manual_backward(self, loss: torch.Tensor) -> None: ...

        def advance_optimization(self, loss: Any, batch_idx: int, gradient_clip_val: Any = None,
                                 gradient_clip_algorithm: Any = None) -> None: ...

        def advance_lr_schedulers(self, batch_idx: int) -> None: ...

        def named_modules(self) -> Iterator[tuple[str, torch.nn.Module]]: ...

        def log(self, name: str, value: float) -> None: ...

    def _init_search(self, options: SearchOptions) -> None:
        self.exact = options.exact
        self.mode = options.mode
        self.warmup_epochs = options.warmup_epochs
        self.arch_update_every = options.arch_update_every
        self.costs, self.cost_spec = options.costs, options.cost_spec

    # What the version glue provides.
    def setup(self, stage: str | None = None):
        """Under a multi-process strategy (Lightning's DDP), prepares the data-parallel search
        (:func:`proxyless_rs.distributed.setup`: draws broadcast from rank 0, alpha gradients
        averaged) before Lightning wraps the module in DDP; both NNI versions' modules run it."""
        import torch.distributed as dist

        from . import distributed

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and \
                getattr(self, '_distributed_search', None) is None:
            self._distributed_search = distributed.setup(self)
        return super().setup(stage)  # type: ignore[misc]

    def _block(self, kind: str, objects: list[Any], make: Callable[[], Any]) -> Any:
        """The search step's ``no_weight_grad`` or ``no_arch_grad`` (``kind``) over ``objects``, made
        once and kept while the step passes the same objects (the model root and the architecture
        optimizer's parameters, or the mixed modules): each made anew walks every module of the
        supernet, which costs as much as a small supernet's whole step overhead. Kept in ``_BLOCKS``,
        outside the module's state (nothing for a checkpoint or a pickle to carry)."""
        cache = _BLOCKS.setdefault(self, {})
        entry = cache.get(kind)
        if entry is None or len(entry[0]) != len(objects) or any(r() is not o for r, o in zip(entry[0], objects)):
            entry = cache[kind] = ([weakref.ref(o) for o in objects], make())
        return entry[1]

    def resample(self, memo: dict[str, Any] | None = None) -> dict[str, Any]:
        """NNI's ``resample()`` (NNI 2.10's takes a memo to start from): every mixed module drawn, in
        NNI's order, with one memo, by a :class:`proxyless_rs.Resampler` of them, made once and kept
        while the modules are the same (:meth:`_block`): the same draws, without a Python frame and a
        dict per mixed layer (a third of a draw in an overhead-bound search)."""
        mixed = self._mixed_modules()
        return self._block('resample', mixed, lambda: Resampler(modules=mixed))(memo or {})

    def _draw_round(self) -> None:
        """Draws every choice (NNI's ``resample``): in one draw round of the data-parallel search
        (one collective, whatever the number of choices) when there is one."""
        search = getattr(self, '_distributed_search', None)
        with search.draws() if search is not None else contextlib.nullcontext():
            self.resample()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Lightning's hook: the random streams and the cost terms' multipliers go into every
        checkpoint, so that a search resumed from it (``ckpt_path``) ends where the uninterrupted
        one ends (:mod:`proxyless_rs.checkpoint`)."""
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint['proxyless_rs'] = {
            'nni': NNI_NAME,
            'rng': rng_state(),
            # NNI's round-robin over several weight optimizers (NNI 2.10's module has it).
            'optimizer_progress': getattr(self, '_optimizer_progress', None),
            'multipliers': {name: spec.multiplier.state_dict() for name, spec in self.cost_spec.items()
                            if spec.multiplier is not None},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        state = checkpoint.get('proxyless_rs')
        if state is None:
            raise ValueError('this checkpoint was not written by proxyless_rs\'s strategy (it has no '
                             '"proxyless_rs" entry: random streams, multipliers); resuming from it would not '
                             'continue the search it came from')
        written = state.get('nni')
        if written is not None and written != NNI_NAME:
            raise ValueError(
                f'this checkpoint was written by proxyless_rs\'s strategy under {written} (Lightning '
                f'{checkpoint.get("pytorch-lightning_version")}); a search under {NNI_NAME} cannot resume it: '
                'the two keep Lightning\'s loops and the optimizers differently (NNI 2.10\'s weight optimizer '
                'holds the alphas too). Its supernet loads under either NNI: '
                'supernet.load_state_dict(proxyless_rs.checkpoint.supernet_state_dict(path))')
        self._check_same_search_space(checkpoint.get('state_dict', {}))
        set_rng_state(state['rng'])
        if state['optimizer_progress'] is not None:
            self._optimizer_progress = state['optimizer_progress']
        for name, multiplier in state['multipliers'].items():
            spec_multiplier = self.cost_spec[name].multiplier
            if spec_multiplier is None:
                raise ValueError(f'the checkpoint holds a Lagrange multiplier for {name!r}, which this search has not')
            spec_multiplier.load_state_dict(multiplier)

    def _check_same_search_space(self, saved: dict[str, Any]) -> None:
        """Refuses a checkpoint of another search space, naming the first layer that differs (before
        Lightning's own load, whose error lists every key)."""
        here: dict[str, Any] = {}  # a layer, or a site of a module
        for name, module in self.named_modules():
            if isinstance(module, ProxylessLayer):
                here[f'{name}._arch_alpha'] = module
            # the sites of a mixed operation's policy, of a cell or of a depth expression
            sites = module.choice_sites() if isinstance(module, SiteHolder) else getattr(
                module.__dict__.get('sampling_policy'), 'sites', {}).values()
            for site in sites:
                here[f'{name}._arch_alpha.{site.label}'] = site
        there = {key: value for key, value in saved.items() if _is_alpha_key(key)}
        for key, layer in here.items():
            if key not in there:
                raise ValueError(f'{layer._name()}: the checkpoint is of another search space; it has no '
                                 f'{key!r} (its layers: {sorted(there)})')
            if tuple(there[key].shape) != tuple(layer._arch_alpha.shape):
                raise ValueError(f'{layer._name()}: the checkpoint is of another search space; {key!r} has '
                                 f'{len(there[key])} candidates there, {len(layer._arch_alpha)} here')
        extra = sorted(set(there) - set(here))
        if extra:
            raise ValueError(f'the checkpoint is of another search space: it has layers this one lacks ({extra})')

    def _mixed_modules(self) -> list[Any]:
        raise NotImplementedError

    def _inner_training_step(self, batch: Any, batch_idx: int) -> Any:
        raise NotImplementedError

    def _log_this_step(self, batch_idx: int) -> bool:
        raise NotImplementedError

    def _penalized(self, loss: torch.Tensor) -> torch.Tensor:
        """Hook for NNI 3.0's profiler penalty (the glue adds it); the identity by default."""
        return loss

    def _check_costs(self) -> None:
        """Refuses a cost table that lacks a choice of the supernet, naming it."""
        if self.costs is not None:
            self.costs.check(*self._mixed_modules())

    def _cost_limits(self) -> dict[str, float]:
        return {name: spec.limit for name, spec in getattr(self, 'cost_spec', {}).items() if spec.limit is not None}

    def export(self):
        """NNI's export, or under cost limits (``latency_limit``, a ``limit`` in ``cost_spec``) the most
        probable architecture whose predicted costs are within them (exact; a depth choice is one
        choice among its depths)."""
        architecture = super().export()
        limits = self._cost_limits()
        if not limits:
            return architecture
        architecture.update(constrained_export(self._model_root(), self.costs, limits))
        return architecture

    def export_top(self, k: int) -> list[RankedArchitecture]:
        """The ``k`` most probable architectures within the search's cost limits (if any), best
        first, each with its probability and the costs its table predicts
        (:func:`proxyless_rs.top_architectures`); each architecture is completed with NNI's export
        for what the proxyless layers do not choose. The first is :meth:`export`'s."""
        base = super().export()  # type: ignore[misc]
        ranked = top_architectures(self._model_root(), k, table=self.costs, limit=self._cost_limits() or None)
        return [r._replace(architecture={**base, **r.architecture}) for r in ranked]

    def export_latency(self) -> float:
        """The latency (ms) the latency table (the ``'latency'`` cost) predicts for :meth:`export`'s architecture."""
        if self.costs is None or 'latency' not in self.costs:
            raise ValueError('export_latency needs a latency table (latency_table, or a "latency" cost in costs)')
        return predicted_latency(self.export(), self._model_root(), self.costs['latency'])  # type: ignore[arg-type]

    def _model_root(self) -> Any:
        raise NotImplementedError

    def _in_warmup(self) -> bool:
        return self.trainer.current_epoch < self.warmup_epochs

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.exact:
            return super().training_step(batch, batch_idx)  # type: ignore[misc]
        arc_optim = self.architecture_optimizers()
        if not isinstance(arc_optim, optim.Optimizer):
            raise TypeError(f'Expect arc_optim to be a single Optimizer, but found: {arc_optim}')
        trn_batch, val_batch = batch['train'], batch['val']
        mixed = self._mixed_modules()

        # Architecture step, on a validation batch: after the warm-up, every arch_update_every steps.
        expected: dict[str, torch.Tensor] | None = None
        if not self._in_warmup() and batch_idx % self.arch_update_every == 0:
            self._draw_round()
            arc_optim.zero_grad()
            # Alpha's gradient only: no weight gradient is computed, nor anything saved for one (the
            # weight step's optimizer clears weight gradients before its own backward, in NNI too).
            arch_params = [p for group in arc_optim.param_groups for p in group['params']]
            root = self._model_root()
            with self._block('arch step', [root, *arch_params], lambda: no_weight_grad(root, keep=arch_params)):
                arc_step_loss = self._inner_training_step(val_batch, 2 * batch_idx)
                if isinstance(arc_step_loss, dict):
                    arc_step_loss = arc_step_loss['loss']
                if self.costs is not None:
                    arc_step_loss, expected = cost_loss(arc_step_loss, self._model_root(), self.costs,
                                                        self.cost_spec)
                arc_step_loss = self._penalized(arc_step_loss)
                self.manual_backward(arc_step_loss)
            with counted_optimizer_step(self.trainer):
                arc_optim.step()
            # Each parameter's pending two-path draw says whether it is rescaled (full mode: none).
            rescale_two_path(*mixed)
            for name, spec in self.cost_spec.items():
                if spec.multiplier is not None:
                    assert expected is not None  # a multiplier comes with a cost table, which gives expected
                    spec.multiplier.step(expected[name])

        # Weight step, on a training batch: no alpha-gradient work.
        self._draw_round()
        with self._block('weight step', mixed, lambda: no_arch_grad(*mixed)):
            loss_and_metrics = self._inner_training_step(trn_batch, 2 * batch_idx + 1)
            w_step_loss = loss_and_metrics['loss'] if isinstance(loss_and_metrics, dict) else loss_and_metrics
            with counted_optimizer_step(self.trainer):
                self.advance_optimization(w_step_loss, batch_idx, self.gradient_clip_val)

        self.advance_lr_schedulers(batch_idx)
        if self._log_this_step(batch_idx):
            self._log_probabilities()
            for name, value in (expected or {}).items():
                self.log('latency/expected_ms' if name == 'latency' else f'cost/expected_{name}',
                         float(value))
        return loss_and_metrics

    def _log_probabilities(self) -> None:
        raise NotImplementedError
