"""What a search holds beyond its modules' and optimizers' state dicts, for a resume that ends
where the uninterrupted search ends.

A ProxylessNAS search draws a path per layer and step from torch's default generator, and its data
loaders shuffle from it: a resumed search is the same search only if those random streams resume
where they were. ``rng_state()`` captures them (torch's CPU generator, every initialised CUDA
device's, Python's ``random``, NumPy's global one), ``set_rng_state`` restores them. The
strategies' Lightning modules put them, and the Lagrange multipliers of their cost terms, into
every Lightning checkpoint (``checkpoint['proxyless_rs']``) and restore them on resume; a plain
training script saves them beside its state dicts (docs/nni.md, "Resume after a crash").

The layers' own state is their parameters (alpha among them). The one thing held elsewhere is a
two-path draw between an architecture step's backward and its rescale, which no state dict
keeps: checkpoint between steps (the strategies' checkpoints come after whole steps).
"""

from __future__ import annotations

import random
from typing import Any

import torch

__all__ = ['rng_state', 'set_rng_state']


def rng_state() -> dict[str, Any]:
    """The random streams a search draws from, as tensors and numbers (what ``torch.load`` with
    ``weights_only=True`` takes)."""
    state: dict[str, Any] = {'torch': torch.get_rng_state(), 'python': random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    try:
        import numpy
    except ImportError:  # numpy is optional for torch
        pass
    else:
        # As a tensor, not an ndarray: torch.load's weights_only (the default from torch 2.6, which
        # Lightning's checkpoint loading uses) refuses NumPy arrays.
        name, keys, position, has_gauss, cached = numpy.random.get_state()
        state['numpy'] = (name, torch.from_numpy(keys.astype('int64')), position, has_gauss, cached)
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` captured."""
    torch.set_rng_state(state['torch'])
    random.setstate(state['python'])
    if 'cuda' in state:
        torch.cuda.set_rng_state_all(state['cuda'])
    if 'numpy' in state:
        import numpy

        name, keys, position, has_gauss, cached = state['numpy']
        numpy.random.set_state((name, keys.numpy().astype('uint32'), position, has_gauss, cached))
