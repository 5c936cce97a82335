"""The one module that touches torch's private or release-dependent API.

proxyless_rs runs on every torch release from 2.0 to 2.15 (torch-span.toml); where torch's API
differs between them, or is private, the difference is handled here, so that a torch release that
changes it breaks in one place.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.utils._pytree as _pytree
from torch.utils._python_dispatch import TorchDispatchMode

from ._core import plain_module_call

__all__ = ['TorchDispatchMode', 'flop_counter_mode', 'is_compiling', 'mark_dynamo_disabled', 'plain_call',
           'tree_leaves']

# Whether Dynamo (torch.compile) is tracing the caller: torch.compiler.is_compiling from torch 2.3
# on, torch._utils.is_compiling before (which Dynamo folds to True while tracing). The function
# itself, not a wrapper: Dynamo recognises these functions, and fails inside a wrapper's logic.
_compiler = getattr(torch, 'compiler', None)
is_compiling: Callable[[], bool] = getattr(_compiler, 'is_compiling', None) or torch._utils.is_compiling


def plain_call(module: nn.Module) -> bool:
    """Whether calling ``module`` would call its ``forward`` and nothing more: no hook of any kind
    (the module's, the global ones), no compiled call (``module.compile()``), no tracing, no Dynamo.
    Where it holds, a mixed layer's ``__call__`` skips nn.Module's two Python frames
    (``_wrapped_call_impl``, ``_call_impl``) and their checks: about 1 us a call, a twentieth of an
    overhead-bound weight step (docs/benchmarks.md, the floor). What the module call reads is the
    core's to know (``src/interop/module_call.rs``, which takes the same shortcut for candidates);
    Dynamo is ruled out here, first, where it folds ``is_compiling()`` to True and so traces
    nn.Module's call."""
    return not is_compiling() and plain_module_call(module)


def mark_dynamo_disabled(fn: Callable[..., Any], reason: str) -> None:
    """Marks ``fn`` the way ``torch.compiler.disable`` does, without importing Dynamo: Dynamo runs
    it eagerly behind a graph break, and under ``fullgraph=True`` refuses with ``reason`` (Dynamo
    reads the reason from torch 2.9 on; before, it names the disabled function)."""
    fn._torchdynamo_disable = True  # type: ignore[attr-defined]
    fn._torchdynamo_disable_msg = reason  # type: ignore[attr-defined]


def tree_leaves(tree: Any) -> list[Any]:
    """The leaves of a pytree (tuples, lists, dicts, namedtuples): ``torch.utils._pytree``'s, which
    has ``tree_leaves`` from torch 2.1 on and ``tree_flatten`` in every release."""
    leaves = getattr(_pytree, 'tree_leaves', None)
    return leaves(tree) if leaves is not None else _pytree.tree_flatten(tree)[0]


def flop_counter_mode() -> Any:
    """A ``torch.utils.flop_counter.FlopCounterMode`` (torch 2.1 on), or a RuntimeError saying so."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError as err:
        raise RuntimeError(f'counting FLOPs needs torch.utils.flop_counter, which torch {torch.__version__} lacks '
                           '(it came with torch 2.1); count params and memory, or give the FLOPs in a CostTable'
                           ) from err
    return FlopCounterMode(display=False)
