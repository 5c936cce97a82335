"""Data-parallel ProxylessNAS search on ``torch.distributed``.

One call, :func:`setup`, after ``init_process_group`` and before wrapping the supernet in
``DistributedDataParallel``, makes a search data-parallel:

- **the same architecture on every rank, in one collective per draw round**: the draws of a round
  (one ``resample`` of the whole supernet) made inside :meth:`DistributedSearch.draws` come from the
  default generators seeded, on every rank, with one number from rank 0, taken by the round's one
  collective (an all-reduce of three integers, whatever the number of choices); the generators are
  forked for the round, so that dropout and anything else the ranks draw stay their own. Ranks whose
  alphas agree (they are broadcast at setup and their gradients averaged) draw the same paths, a
  stochastic softmax (NNI's GumbelSoftmax) the same noise. The same collective checks the previous
  round: ranks that drew differently (their alphas or softmax differ) fail with a ``RuntimeError``
  saying so, never a silent divergence. The strategies (:mod:`proxyless_rs.strategy`) open the
  rounds themselves; a script writes ``with search.draws(): net.resample()``. A draw outside a round
  is broadcast from rank 0 on its own (one collective per draw, as before rounds existed).
- **averaged architecture gradients**: the alphas are taken out of DDP's hands (DDP ignores them
  and never waits for them) and, at the end of every backward that gave one a gradient, the
  alpha gradients of the model are averaged across ranks in one all-reduce (queued on autograd's
  engine, as DDP queues its own), so that the averaging is the same however the supernet is
  wrapped. The alphas are broadcast from rank 0 once, at setup.
- **DDP without complaints**: wrap with ``find_unused_parameters=True`` (the unsampled
  candidates' weights get no gradient in a step); Lightning's ``strategy='ddp'`` does by default.

These collectives run on a process group of their own (created by :func:`setup` over all ranks,
with the default group's backend and timeout): DDP's reducer runs its bucket all-reduces
asynchronously on the default group during backward, and interleaving other collectives with
them on one group could order them differently on different ranks and deadlock. Collectives that
fail (a peer died, the process group's ``timeout`` ran out) raise a ``RuntimeError`` that says
which step of the search failed on which rank.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ._choices import choices, unique_arch_parameters

__all__ = ['setup', 'DistributedSearch']


def _fail(what: str, err: Exception) -> RuntimeError:
    rank = dist.get_rank() if dist.is_initialized() else '?'
    return RuntimeError(f'proxyless_rs.distributed: {what} failed on rank {rank} (a peer process may have died, or '
                        f'the process group timeout ran out): {err}')


class DistributedSearch:
    """The data-parallel state of one supernet (returned by :func:`setup`)."""

    def __init__(self, arch_parameters: Sequence[Any], group=None, src: int = 0):
        # The ArchParameters of the model: each holds this search's agreement and callback.
        self.arch_parameters = list(arch_parameters)
        self.alphas = [arch.alpha for arch in self.arch_parameters]
        self.group = group
        self.src = src
        self.world_size = dist.get_world_size(group)
        self._queued = False
        # The open round's draws (None: no round open), and the closed round's not yet checked.
        self._round: list[int] | None = None
        self._unchecked: list[int] | None = None
        # Each alpha's device: a round forks (and seeds) the generators that draw there.
        self._cuda_devices = sorted({alpha.device.index or 0 for alpha in self.alphas if alpha.device.type == 'cuda'})
        self.rounds = 0

    def comm_device(self, device: torch.device) -> torch.device:
        """Where a tensor on ``device`` must be for this group's collectives (NCCL: the GPU; else host)."""
        return device if dist.get_backend(self.group) == 'nccl' else torch.device('cpu')

    @contextlib.contextmanager
    def draws(self) -> Iterator[None]:
        """One draw round: every draw inside comes from the default generators seeded with rank
        ``src``'s number, forked for the round (their states are back as they were at its end); one
        collective for the round, which also checks that the previous round drew the same on every
        rank. Every rank opens the same rounds, in the same order (a collective)."""
        if self._round is not None:
            raise RuntimeError('proxyless_rs.distributed: a draw round is already open (rounds do not nest)')
        seed = self._open_round()
        with torch.random.fork_rng(devices=self._cuda_devices):
            torch.random.default_generator.manual_seed(seed)
            for index in self._cuda_devices:
                torch.cuda.default_generators[index].manual_seed(seed)
            self._round = []
            try:
                yield
            finally:
                self._unchecked, self._round = self._round, None
                self.rounds += 1

    def _open_round(self) -> int:
        """The round's seed (rank ``src``'s) and the previous round's check, in one all-reduce (max)
        of ``[seed or -1, digest, -digest]``: every rank's digest equal iff max == -max(-digest)."""
        # ``src`` is a global rank, as for the broadcasts outside rounds.
        seed = int(torch.randint(0, 2**62, ())) if dist.get_rank() == self.src else -1
        digest = _digest(self._unchecked)
        buffer = torch.tensor([seed, digest, -digest], dtype=torch.int64,
                              device=self.comm_device(self.alphas[0].device))
        try:
            dist.all_reduce(buffer, op=dist.ReduceOp.MAX, group=self.group)
        except Exception as err:
            raise _fail('agreeing on the draws of a round', err) from err
        agreed_seed, most, least = buffer.tolist()
        if most != -least:
            raise RuntimeError(
                f'proxyless_rs.distributed: the ranks drew different architectures in the previous draw round '
                f'(rank {dist.get_rank()} drew {self._unchecked}): their alphas or their softmax differ (a '
                'softmax that draws noise from a generator of its own, or alphas changed outside the averaged '
                'architecture step)')
        self._unchecked = None
        return agreed_seed

    def agree(self, values: list[int], device: torch.device) -> list[int]:
        """``values`` as drawn on rank ``src`` (every rank calls this for every draw): the draw itself
        inside a round (every rank drew from rank ``src``'s seed), else rank ``src``'s, broadcast."""
        if self._round is not None:
            self._round.extend(values)
            return values
        buffer = torch.tensor(values, dtype=torch.int64, device=self.comm_device(device))
        try:
            dist.broadcast(buffer, self.src, group=self.group)
        except Exception as err:  # gloo raises RuntimeError, NCCL DistBackendError
            raise _fail('broadcasting the sampled architecture', err) from err
        return buffer.tolist()

    def after_backward(self) -> None:
        """Called by each layer's backward before autograd adds its gradient into ``alpha.grad``:
        queue one all-reduce for the end of this backward, when every alpha's gradient is in."""
        if not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self.average_gradients)

    def average_gradients(self) -> None:
        """Averages every alpha's gradient across ranks, in one all-reduce (missing ones count as 0)."""
        self._queued = False
        for alpha in self.alphas:
            if alpha.grad is None:
                alpha.grad = torch.zeros_like(alpha)
        flat = torch.cat([alpha.grad.reshape(-1) for alpha in self.alphas])
        flat = flat.to(self.comm_device(flat.device))
        try:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        except Exception as err:
            raise _fail('averaging the architecture gradients', err) from err
        flat /= self.world_size
        offset = 0
        for alpha in self.alphas:
            alpha.grad.copy_(flat[offset:offset + alpha.numel()].view_as(alpha.grad))
            offset += alpha.numel()

    def detach(self) -> None:
        """Undoes :func:`setup` for the layers (DDP's ignore list is left as it is)."""
        for arch in self.arch_parameters:
            arch.agreement = None
            arch.after_backward = None


def _digest(draws: list[int] | None) -> int:
    """A round's draws as one non-negative integer (0: no round to check)."""
    if draws is None:
        return 0
    return 1 + int.from_bytes(hashlib.blake2b(repr(draws).encode(), digest_size=7).digest(), 'little')


def _default_group_timeout():
    """The timeout the default process group was created with (None if it cannot be read)."""
    try:
        group = dist.distributed_c10d._get_default_group()
        device = torch.device('cuda') if dist.get_backend() == 'nccl' else torch.device('cpu')
        return group._get_backend(device).options._timeout
    except (AttributeError, RuntimeError):
        return None


def setup(model: nn.Module, group=None, src: int = 0) -> DistributedSearch:
    """Prepares ``model``'s ProxylessNAS layers for a data-parallel search (see the module doc).

    Call once on every rank, after ``torch.distributed.init_process_group`` and before
    ``DistributedDataParallel(model, find_unused_parameters=True)``. ``group`` defaults to a new
    group over all ranks with the default group's backend and timeout (keep it apart from the one
    DDP uses). Returns the
    :class:`DistributedSearch`; nothing else needs calling during the search.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError('proxyless_rs.distributed.setup needs an initialised process group: call '
                           'torch.distributed.init_process_group first')
    if group is None:
        # Same backend and timeout as the default group, so a dead peer fails us as soon as it would DDP.
        group = dist.new_group(backend=dist.get_backend(), timeout=_default_group_timeout())
    found = list(choices(model))
    if not found:
        raise ValueError('proxyless_rs.distributed.setup: the model has no ProxylessNAS mixed layers or value choices')
    arch_parameters = unique_arch_parameters(found)
    alphas = [arch.alpha for arch in arch_parameters]
    alpha_ids = {id(alpha) for alpha in alphas}
    names = [name for name, p in model.named_parameters() if id(p) in alpha_ids]
    ignored = list(getattr(model, '_ddp_params_and_buffers_to_ignore', []))
    to_ignore = ignored + [n for n in names if n not in ignored]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, to_ignore)

    search = DistributedSearch(arch_parameters, group, src)
    with torch.no_grad():
        for alpha in alphas:
            try:
                buffer = alpha.detach().to(search.comm_device(alpha.device))
                dist.broadcast(buffer, src, group=group)
            except Exception as err:
                raise _fail('broadcasting the architecture parameters', err) from err
            alpha.copy_(buffer)
    for arch in arch_parameters:
        arch.agreement = search.agree
        arch.after_backward = search.after_backward
    return search
