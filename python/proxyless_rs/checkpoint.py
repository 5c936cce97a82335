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

The layers' state dict keys are the same under NNI 2.10 and NNI 3.0, so a script's checkpoint
loads under either. A strategy's Lightning checkpoint resumes under the NNI version that wrote
it only (Lightning 1.9 and 2.0 keep their loops differently, and NNI 2.10's weight optimizer holds
the alphas too, NNI 3.0's does not); the supernet inside it loads anywhere through
:func:`supernet_state_dict`.
"""

from __future__ import annotations

import os
import random
import zipfile
from typing import Any, cast

import torch

__all__ = ['rng_state', 'set_rng_state', 'supernet_state_dict', 'written_under', 'check_readable']

# Where each NNI version's one-shot Lightning module keeps the supernet, as the prefix of its keys
# in the module's state dict: NNI 2.10's module holds the evaluator's module as ``model``, which
# holds the supernet as ``model``; NNI 3.0's holds it as ``training_module``, which keeps ``_model``.
SUPERNET_PREFIX = {'NNI 2.10': 'model.model.', 'NNI 3.0': 'training_module._model.'}


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
        name, keys, position, has_gauss, cached = cast(tuple, numpy.random.get_state())
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


def check_readable(path: str | os.PathLike[str]) -> None:
    """Refuses a checkpoint file torch cannot read (missing, truncated by a crash mid-write, not a torch
    file), naming it, before anything is loaded or changed. torch writes its checkpoints as zip
    archives, whose directory is at the end: a file cut short has none."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {os.fspath(path)!r}: no such file; nothing was loaded or changed')
    if not zipfile.is_zipfile(path):
        raise ValueError(f'checkpoint {os.fspath(path)!r} is unreadable: not a complete torch checkpoint (truncated, '
                         'as by a crash while it was written, or another kind of file); nothing was loaded or changed. '
                         'Resume from an earlier checkpoint.')


def _loaded(checkpoint: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(checkpoint, dict):
        return checkpoint
    check_readable(checkpoint)
    return torch.load(checkpoint, map_location='cpu', weights_only=True)


def written_under(checkpoint: str | os.PathLike[str] | dict[str, Any]) -> str:
    """``'NNI 2.10'`` or ``'NNI 3.0'``: the NNI version whose strategy wrote a Lightning checkpoint of
    proxyless_rs's strategy (a path, or the loaded dict), as recorded in it, or else read from
    where its state dict keeps the supernet."""
    checkpoint = _loaded(checkpoint)
    recorded = checkpoint.get('proxyless_rs', {}).get('nni')
    if recorded is not None:
        return recorded
    keys = checkpoint.get('state_dict', {})
    for nni, prefix in SUPERNET_PREFIX.items():
        if any(key.startswith(prefix) for key in keys):
            return nni
    raise ValueError('this is not a Lightning checkpoint of a one-shot strategy under NNI 2.10 or NNI 3.0: its '
                     f'state dict keeps no supernet under {" or ".join(map(repr, SUPERNET_PREFIX.values()))}')


def supernet_state_dict(checkpoint: str | os.PathLike[str] | dict[str, Any]) -> dict[str, torch.Tensor]:
    """The supernet's state dict inside a Lightning checkpoint of proxyless_rs's strategy (a path, or
    the loaded dict), written under either NNI version: the keys the supernet itself has (``stem.weight``,
    ``block1._arch_alpha``, ...), without the one-shot module's prefix. It loads, with
    ``supernet.load_state_dict``, into the supernet of the same space under either NNI version or in
    a plain script of the same layers and names: for :func:`proxyless_rs.freeze`, fine-tuning, or a
    new search warm-started from it."""
    checkpoint = _loaded(checkpoint)
    prefix = SUPERNET_PREFIX[written_under(checkpoint)]
    return {key[len(prefix):]: value for key, value in checkpoint['state_dict'].items() if key.startswith(prefix)}
