"""Type stubs for the compiled core ``proxyless_rs._core`` (Rust, built by maturin)."""

from typing import Any, Optional

import torch
from torch import nn

class ProxylessContext:
    """Saved-forward stack of one mixed layer, with its architecture weights and softmax.

    Nothing is saved when no backward can follow (grad disabled, or no output tensor
    requires grad). Pickling keeps ``arch_alpha``, ``softmax`` and ``label`` only.
    """

    arch_alpha: torch.Tensor
    softmax: nn.Module
    label: Optional[str]
    backward_hook: BackwardHook
    def __init__(self, arch_alpha: torch.Tensor, softmax: nn.Module, label: Optional[str] = None) -> None: ...
    def save_forward_context(self, layer_input: tuple[tuple[Any, ...], dict[str, Any]], layer_output: Any,
                             layer_sample_idx: int) -> bool:
        """Save one forward call; returns whether anything was saved."""
    def clear_context(self) -> None: ...
    def __len__(self) -> int: ...

class BackwardHook:
    """The callable to register with ``nn.Module.register_full_backward_hook``."""

    ctx: ProxylessContext
    def __init__(self, ctx: ProxylessContext) -> None: ...
    def __call__(self, module: nn.Module, grad_input: Any, grad_output: Any) -> None: ...

def sample_index(probs: torch.Tensor) -> int:
    """One draw of ``torch.multinomial(probs, 1)``, as a Python int."""

def alpha_grad(probs: torch.Tensor, binary_grads: torch.Tensor) -> torch.Tensor:
    """``probs * (binary_grads - <binary_grads, probs>)``: the gradient of alpha through binary gates."""
