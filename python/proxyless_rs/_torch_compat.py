"""The one module that touches torch's private or release-dependent API.

proxyless_rs runs on every torch release from 2.0 to 2.15 (torch-span.toml); where torch's API
differs between them, or is private, the difference is handled here, so that a torch release that
changes it breaks in one place.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.modules.module as _module
import torch.utils._pytree as _pytree
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['TorchDispatchMode', 'flop_counter_mode', 'is_compiling', 'mark_dynamo_disabled', 'plain_call',
           'tree_leaves']

# Whether Dynamo (torch.compile) is tracing the caller: torch.compiler.is_compiling from torch 2.3
# on, torch._utils.is_compiling before (which Dynamo folds to True while tracing). The function
# itself, not a wrapper: Dynamo recognises these functions, and fails inside a wrapper's logic.
_compiler = getattr(torch, 'compiler', None)
is_compiling: Callable[[], bool] = getattr(_compiler, 'is_compiling', None) or torch._utils.is_compiling


# What nn.Module's call reads before it calls forward with no hook set: the module's four hook dicts,
# these global ones (and, once a hook is set, the always-called flags), the compiled call (torch 2.1
# on), the tracing state.
_GLOBAL_HOOKS = ('_global_backward_pre_hooks', '_global_backward_hooks', '_global_forward_pre_hooks',
                 '_global_forward_hooks')
_KNOWN_GLOBALS = frozenset((*_GLOBAL_HOOKS, '_global_forward_hooks_always_called'))
_module_globals = _module.__dict__
_is_tracing = torch._C._is_tracing


def _module_call_is_known() -> bool:
    """Whether this torch's ``nn.Module.__call__`` is the one :func:`plain_call` knows: ``_call_impl``,
    or ``_wrapped_call_impl`` (torch 2.1 on: the compiled call, else ``_call_impl``), reading no
    global of its module but the hook dicts. A release that reads anything else (a new kind of hook)
    gets nn.Module's call in every layer: slower, never wrong."""
    call_impl = getattr(nn.Module, '_call_impl', None)
    wrapped = getattr(nn.Module, '_wrapped_call_impl', None)
    if call_impl is None or nn.Module.__call__ not in (call_impl, wrapped):
        return False
    if nn.Module.__call__ is wrapped and not set(wrapped.__code__.co_names) <= {'_compiled_call_impl', '_call_impl'}:
        return False
    read = {name for name in call_impl.__code__.co_names if name.startswith('_global')}
    return read <= _KNOWN_GLOBALS and all(name in _module_globals for name in _GLOBAL_HOOKS)


_PLAIN_CALL_KNOWN = _module_call_is_known()


def plain_call(module: nn.Module) -> bool:
    """Whether calling ``module`` would call its ``forward`` and nothing more: no hook of any kind
    (the module's, the global ones), no compiled call (``module.compile()``), no tracing, no Dynamo.
    Where it holds, a mixed layer's ``__call__`` skips nn.Module's two Python frames
    (``_wrapped_call_impl``, ``_call_impl``) and their checks: about 1 us a call, a twentieth of an
    overhead-bound weight step (docs/benchmarks.md, the floor)."""
    # Dynamo first: it folds is_compiling() to True and traces nn.Module's call, nothing of this.
    if is_compiling() or not _PLAIN_CALL_KNOWN:
        return False
    d = module.__dict__
    g = _module_globals
    try:
        hooked = d['_forward_pre_hooks'] or d['_forward_hooks'] or d['_backward_pre_hooks'] or d['_backward_hooks']
    except KeyError:  # a module that nn.Module.__init__ did not make: the full call
        return False
    return not (hooked or g['_global_forward_pre_hooks'] or g['_global_forward_hooks']
                or g['_global_backward_pre_hooks'] or g['_global_backward_hooks']
                or d.get('_compiled_call_impl') is not None or _is_tracing())


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
