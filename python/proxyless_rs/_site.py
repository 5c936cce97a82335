"""One choice of a module that holds several (no NNI import): a mixed operation's value choice
(``_mixed.ValueChoiceSite``), a cell's op or input of one slot (``_cell.CellChoice``), the label of
a depth expression (``_depth.DepthChoice``). What a layer
choice has, so that the search step, hardware costs, exports, distributed search and the no-grad
blocks treat it as they treat a layer: ``label``, ``names`` (the alternatives), ``ctx`` (its
``ProxylessContext``), ``_arch_alpha`` (the module's ``nn.ParameterDict`` entry), ``softmax``,
``probabilities()``, ``active_index``, ``_name()``, and ``module`` (the module that holds it)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from ._core import ProxylessContext
from ._layer import _arch_parameter

__all__ = ['ChoiceSite', 'SiteHolder']


class ChoiceSite:
    """One choice (a label) of ``module``, whose alphas are ``module._arch_alpha[label]``; ``noun`` is
    what error messages call an alternative (``value``, ``candidate``, ``input``)."""

    noun = 'value'

    def __init__(self, module: nn.Module, label: str, names: list, alpha: torch.Tensor, softmax: nn.Module,
                 mode: str, name: str):
        self.module = module
        self.label = label
        self.names = list(names)
        if len(self.names) == 1:  # no choice (a cell's first node of one predecessor): nothing for two-path to draw
            mode = 'full'
        self.ctx = ProxylessContext(_arch_parameter(alpha), softmax, label, name, mode, self.names, self.noun)
        self.index: int | None = None

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.ctx.name}, {self.noun}s={self.names})'

    def _name(self) -> str:
        return self.ctx.name

    @property
    def _arch_alpha(self) -> torch.Tensor:
        return self.module._arch_alpha[self.label]

    def _alpha_now(self) -> torch.Tensor:
        """Alpha as this call sees it (``torch.func.functional_call`` may substitute the entry)."""
        params = self.module._arch_alpha.__dict__
        alpha = params.get(self.label)
        return params['_parameters'][self.label] if alpha is None else alpha

    @property
    def softmax(self) -> nn.Module:
        return self.ctx.softmax

    def probabilities(self) -> torch.Tensor:
        """``softmax(alpha)``, differentiable in alpha."""
        return self.ctx.softmax(self._arch_alpha)

    @property
    def mode(self) -> str:
        return self.ctx.mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self.ctx.mode = mode

    @property
    def active_index(self) -> int | None:
        return self.index

    def index_of(self, value: Any) -> int:
        """The index of ``value`` (as an architecture or a memo spells it) among the alternatives."""
        for i, v in enumerate(self.names):
            if v == value and type(v) is not bool and type(value) is not bool:
                return i
        raise ValueError(f'{self._name()}: the architecture chose {value!r}, which is not one of its {self.noun}s '
                         f'{self.names}')

    def exported(self, index: int) -> Any:
        """Alternative ``index`` as an architecture spells it."""
        return self.names[index]

    def index_of_exported(self, value: Any) -> int:
        """The index of an alternative as an architecture spells it (:meth:`exported`), checked."""
        return self.index_of(value)

    # What hardware costs count (``proxyless_rs.hardware.counting``) -------------------------------------

    def cost_inputs(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """What :meth:`forward_candidate` takes, from the inputs of a call of :attr:`module`."""
        return args, kwargs

    def forward_candidate(self, k: int, *args: Any, **kwargs: Any) -> Any:
        """Alternative ``k`` alone, on :meth:`cost_inputs`' arguments: what its costs are counted on."""
        raise NotImplementedError

    def candidate_module(self, k: int) -> nn.Module | None:
        """The module whose parameters alternative ``k`` holds (``None``: none of its own)."""
        return None

    def most_probable(self) -> int:
        """The index of the most probable alternative (the first of equals)."""
        with torch.no_grad():
            probs = self.probabilities().cpu().tolist()
        return max(range(len(probs)), key=lambda i: (probs[i], -i))


class SiteHolder:
    """A module whose choices are :class:`ChoiceSite` objects it holds (a cell, a depth expression):
    what :func:`proxyless_rs._choices.choices` asks for them."""

    def choice_sites(self) -> Sequence[ChoiceSite]:
        raise NotImplementedError
