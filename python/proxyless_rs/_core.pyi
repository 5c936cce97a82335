"""Type stubs for the compiled core ``proxyless_rs._core`` (Rust, built by maturin)."""

from typing import Any, Callable, Optional, Sequence, final

import torch
from torch import nn

__all__ = ["TORCH_VERSION", "TORCH_SPAN", "ArchParameter", "ProxylessContext", "TapBackward", "sample_index",
           "alpha_grad", "constrained_choices", "plain_module_call", "module_call_is_known"]

TORCH_VERSION: str
"""``torch.__version__`` of the torch this core was built against (its release is checked at import)."""

TORCH_SPAN: str
"""The torch releases proxyless-rs builds against, as torch-span.toml lists them (``2.0 to 2.15``)."""

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
    """The Rust side of one choice: its ArchParameter, softmax, mode, draws and forward.

    A choice is what the Python side hands over: its alternatives, as a list of callables (each
    called as ``alternatives[k](*args, **kwargs)``; an ``nn.Module`` without hooks is called
    without ``nn.Module.__call__``'s frame) or one callable (called as
    ``alternatives(k, *args, **kwargs)``), and the tensor that is alpha in the call. Each forward
    that a backward can follow passes its output through the gradient tap, an autograd node with
    alpha as an input, whose hook owns the saved inputs and output. Nothing is saved when grad is
    disabled, alpha does not require grad, no output tensor is floating-point, or ``enabled`` is
    False. Pickling keeps the ArchParameter, softmax, label, name, mode, names and noun.
    """

    def __new__(cls, arch: ArchParameter | torch.Tensor, softmax: nn.Module, label: Any = None,
                name: Optional[str] = None, mode: str = "full", names: Optional[Sequence[Any]] = None,
                noun: str = "candidate") -> "ProxylessContext": ...
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
    def partner_of(self, index: int) -> Optional[int]: ...
    mode: str
    enabled: bool
    def resample(self, chosen: Optional[int] = None) -> int:
        """Take ``chosen`` (from a memo) or draw from ``softmax(alpha)``; returns the path index."""
    def forward(self, alternatives: Any, args: tuple[Any, ...], kwargs: Optional[dict[str, Any]], index: int,
                alpha: torch.Tensor) -> Any:
        """Run alternative ``index`` on ``args`` / ``kwargs`` and pass its output through the tap."""
    def tap(self, alternatives: Any, args: tuple[Any, ...], kwargs: Optional[dict[str, Any]], index: int,
            alpha: torch.Tensor, output: Any) -> Any:
        """Pass ``output``, alternative ``index`` on ``args`` / ``kwargs`` computed by the caller, through the tap."""
    def __len__(self) -> int:
        """The number of calls whose saved state is alive."""

@final
class TapBackward:
    """The binary-gate backward of one call, held by its gradient tap (created by ``forward``)."""

    def __call__(self, grads: Any, alpha_needed: bool) -> Any:
        """Alpha's gradient from the tapped outputs' gradients, or None when not ``alpha_needed``."""

    def release(self) -> None:
        """Frees the call's saved state (a backward freed the graph it belongs to)."""

def sample_index(probs: torch.Tensor) -> int:
    """One draw of ``torch.multinomial(probs, 1)``, as a Python int."""

def alpha_grad(probs: torch.Tensor, binary_grads: torch.Tensor) -> torch.Tensor:
    """``probs * (binary_grads - <binary_grads, probs>)``: the gradient of alpha through binary gates."""

def constrained_choices(values: list[list[float]], costs: list[list[list[float]]], limits: list[float],
                        k: int = 1) -> tuple[list[tuple[list[int], float]], int]:
    """The ``k`` most valuable choices of one item per group under limits on summed costs, exactly.

    ``values[g][i]``: log-probability of candidate ``i`` of group ``g`` (``-inf`` for zero);
    ``costs[g][i][k]``: its cost ``k``; ``limits[k]``: the limit of cost ``k`` (``inf``: none).
    Returns ``(ranked, nodes)``: up to ``k`` pairs ``(choice, value)`` best first (candidate index
    per group, summed value; ties in the choices' lexicographic order; empty when no choice meets
    every limit, up to a relative 1e-9) and the search nodes visited. Branch and bound
    (``src/constrained.rs``)."""

def plain_module_call(module: nn.Module) -> bool:
    """Whether calling ``module``, whose class overrides ``__call__`` (a mixed layer), would otherwise
    call ``forward`` and nothing else: no hook of any kind, no compiled call, no trace, on a torch
    whose ``nn.Module.__call__`` is the known one (Dynamo is the caller's to rule out)."""

def module_call_is_known() -> bool:
    """Whether this torch's ``nn.Module.__call__`` is the one the core's shortcuts know, computed now
    (the shortcuts use the value computed at their first use)."""
