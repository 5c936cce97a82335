"""Type stubs for the compiled core ``proxyless_rs._core`` (Rust, built by maturin)."""

from typing import Any, Callable, Optional, final

import torch
from torch import nn

__all__ = ["TORCH_VERSION", "ArchParameter", "ProxylessContext", "OutputGradHook", "sample_index", "alpha_grad",
           "rescale_two_path", "constrained_choice"]

TORCH_VERSION: str
"""``torch.__version__`` of the torch this core was built against (its release is checked at import)."""

@final
class ArchParameter:
    """One architecture parameter and what belongs to it rather than to one layer: its pending
    two-path draw and rescale, its distributed agreement, its after-backward callback. Layers that
    share alpha (one label) share it. Pickling keeps ``alpha`` only."""

    def __new__(cls, alpha: torch.Tensor) -> "ArchParameter": ...
    @property
    def alpha(self) -> torch.Tensor: ...
    @property
    def pending(self) -> Optional[tuple[int, int]]:
        """``(active, inactive)`` of the two-path draw waiting for :meth:`rescale`, or None."""
    agreement: Optional[Callable[[list[int], torch.device], list[int]]]
    after_backward: Optional[Callable[[], Any]]
    def rescale(self) -> bool:
        """Two-path rescale after the optimizer step; returns whether a draw was pending."""

@final
class ProxylessContext:
    """The Rust side of one mixed layer: its ArchParameter, softmax, mode, draws and forward.

    Each forward that a backward can follow hands its saved inputs and output to a hook on that
    call's output. Nothing is saved when grad is disabled, no output tensor requires grad, or
    ``enabled`` is False. Pickling keeps the ArchParameter, softmax, label, name and mode.
    """

    def __new__(cls, arch: ArchParameter | torch.Tensor, softmax: nn.Module, label: Any = None,
                name: Optional[str] = None, mode: str = "full") -> "ProxylessContext": ...
    @property
    def arch(self) -> ArchParameter: ...
    @property
    def arch_alpha(self) -> torch.Tensor: ...
    @property
    def softmax(self) -> nn.Module: ...
    @property
    def label(self) -> Any: ...
    @property
    def name(self) -> str: ...
    @property
    def partner(self) -> Optional[int]: ...
    mode: str
    enabled: bool
    grad_forwards: int
    def resample(self, chosen: Optional[int] = None) -> int:
        """Take ``chosen`` (from a memo) or draw from ``softmax(alpha)``; returns the path index."""
    def forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: Optional[dict[str, Any]],
                index: int) -> Any:
        """Run ``module.forward_path(index, *args, **kwargs)`` and hook its output for the backward."""
    def __len__(self) -> int:
        """The number of calls whose saved state is alive."""

@final
class OutputGradHook:
    """The binary-gate backward of one call, registered on its output (created by ``forward``)."""

    def __call__(self, grads: Any) -> None: ...

def sample_index(probs: torch.Tensor) -> int:
    """One draw of ``torch.multinomial(probs, 1)``, as a Python int."""

def alpha_grad(probs: torch.Tensor, binary_grads: torch.Tensor) -> torch.Tensor:
    """``probs * (binary_grads - <binary_grads, probs>)``: the gradient of alpha through binary gates."""

def rescale_two_path(alpha: torch.Tensor, indices: list[int], before: torch.Tensor) -> None:
    """After a two-path optimizer step: restore the other logits, shift ``alpha[indices]`` to keep their mass."""

def constrained_choice(values: list[list[float]], costs: list[list[list[float]]],
                       limits: list[float]) -> Optional[tuple[list[int], float, int]]:
    """The exact most valuable choice of one item per group under limits on summed costs.

    ``values[g][i]``: log-probability of candidate ``i`` of group ``g`` (``-inf`` for zero);
    ``costs[g][i][k]``: its cost ``k``; ``limits[k]``: the limit of cost ``k`` (``inf``: none).
    Returns ``(choice, value, nodes)`` (candidate index per group, summed value, search nodes
    visited), or None when no choice meets every limit (up to a relative 1e-9). Branch and bound
    (``src/constrained.rs``)."""
