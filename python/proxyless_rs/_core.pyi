"""Type stubs for the compiled core ``proxyless_rs._core`` (Rust, built by maturin)."""

from typing import Any, Callable, Optional

import torch
from torch import nn

class ProxylessContext:
    """Saved-forward stack of one mixed layer, with its architecture weights and softmax.

    Nothing is saved when no backward can follow (grad disabled, no output tensor requires
    grad, or ``enabled`` is False). Pickling keeps ``arch_alpha``, ``softmax`` and ``label`` only.
    """

    arch_alpha: torch.Tensor
    softmax: nn.Module
    label: Optional[str]
    backward_hook: BackwardHook
    enabled: bool
    after_backward: Optional[Callable[[], Any]]
    def __init__(self, arch_alpha: torch.Tensor, softmax: nn.Module, label: Optional[str] = None) -> None: ...
    def save_forward_context(self, layer_input: tuple[tuple[Any, ...], dict[str, Any]], layer_output: Any,
                             layer_sample_idx: int) -> bool:
        """Save one forward call for ``backward_hook`` registered as a full backward hook."""
    def forward_output(self, module: nn.Module, layer_input: tuple[tuple[Any, ...], dict[str, Any]],
                       layer_output: Any, layer_sample_idx: int, partner: Optional[int] = None) -> Any:
        """Save one forward call and return the output with its binary-gate backward hooked."""
    def sample(self) -> int:
        """One path index drawn from ``softmax(arch_alpha)`` (``torch.multinomial``'s generator)."""
    def sample_two(self) -> tuple[int, int, torch.Tensor]:
        """Two-path draw: ``(active, inactive, copy of arch_alpha)``."""
    def clear_context(self) -> None: ...
    def __len__(self) -> int: ...

class BackwardHook:
    """The binary-gate backward as a full backward hook (``register_full_backward_hook``)."""

    ctx: ProxylessContext
    def __init__(self, ctx: ProxylessContext) -> None: ...
    def __call__(self, module: nn.Module, grad_input: Any, grad_output: Any) -> None: ...

class OutputGradHook:
    """The binary-gate backward as a hook on a layer's output tensors (created by ``forward_output``)."""

    def __call__(self, grads: Any) -> None: ...

def sample_index(probs: torch.Tensor) -> int:
    """One draw of ``torch.multinomial(probs, 1)``, as a Python int."""

def alpha_grad(probs: torch.Tensor, binary_grads: torch.Tensor) -> torch.Tensor:
    """``probs * (binary_grads - <binary_grads, probs>)``: the gradient of alpha through binary gates."""

def rescale_two_path(alpha: torch.Tensor, indices: list[int], before: torch.Tensor) -> None:
    """After a two-path optimizer step: restore the other logits, shift ``alpha[indices]`` to keep their mass."""
