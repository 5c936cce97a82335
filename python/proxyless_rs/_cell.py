"""ProxylessNAS on NNI's cells, whichever NNI is installed (no NNI import here: ``nni.v2.cell`` and
``nni.v3.cell`` put :class:`ProxylessCell` in front of that NNI's ``PathSamplingCell`` and say how its
labels read).

NNI's ``Cell`` (the NDS family: DARTS, NASNet, ENAS, AmoebaNet, PNAS, and any user's) is a graph
of nodes; each node sums ``num_ops_per_node`` slots, and each slot applies one op of the
candidates to one of the earlier states. Where the ops depend on the input they are applied to (a
reduction cell builds its ops with stride 2 for the cell's inputs only: ``op_candidates(node,
op, input)``), an op and an input drawn one by one disagree: the cell is one unit, as NNI's
``PathSamplingCell`` and ``DifferentiableMixedCell`` take it (a full graph, one ``ModuleDict`` of
candidates per edge). :class:`ProxylessCell` is ProxylessNAS on that graph:

- **each slot draws its input and its op** from their alphas (NNI's labels ``<cell>/input_<i>_<k>``
  and ``<cell>/op_<i>_<k>``, the ones its ``Cell`` and ``ModelSpace.freeze`` / ``fixed_arch`` use);
  the forward runs the drawn op on the drawn input only: one path per slot;
- **both get binary gates** (:class:`CellChoice`, choices of the core): the op choice's
  alternatives are the other ops of the drawn edge on the saved drawn input (exact, as a layer
  choice's); the input choice's, the drawn op built for each other input, on that input (exact:
  every edge's op gives the node's shape);
- the merge is NNI's path-sampling cell's: every node is concatenated (``loose_end`` included, as
  NNI's ``PathSamplingCell`` merges it, so that what follows the cell sees fixed channels);
  preprocessor and postprocessor are NNI's cell's.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ._layer import chosen_inputs, label_alpha
from ._site import ChoiceSite, SiteHolder

__all__ = ['ProxylessCell', 'CellChoice', 'preprocess_cell_inputs']


def preprocess_cell_inputs(num_predecessors: int, *inputs: Any) -> list[torch.Tensor]:
    """A cell's inputs as a list of ``num_predecessors`` tensors (a list, or positional tensors), as
    NNI's cell takes them."""
    processed = list(inputs[0]) if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) else list(inputs)
    if len(processed) != num_predecessors:
        raise ValueError(f'a cell of {num_predecessors} predecessors was given {len(processed)} inputs')
    return processed


class CellChoice(ChoiceSite):
    """One slot's op choice (its alternatives: the op names) or input choice (the earlier states'
    indices) of a :class:`ProxylessCell`."""

    def __init__(self, cell: nn.Module, label: str, names: list, alpha: torch.Tensor, softmax: nn.Module, mode: str,
                 kind: str, exported_input: Callable[[int], Any], node: int):
        self.kind = kind
        self.node = node
        self.noun = 'candidate' if kind == 'op' else 'input'
        self._exported_input = exported_input
        super().__init__(cell, label, names, alpha, softmax, mode, f'{type(cell).__name__} {label!r}')

    def exported(self, index: int) -> Any:
        return self.names[index] if self.kind == 'op' else self._exported_input(index)

    def index_of_exported(self, value: Any) -> int:
        if self.kind == 'op':
            return self.index_of(value)
        (index,) = chosen_inputs(self._name(), value, len(self.names))[:1]
        return index

    # Hardware costs: a slot costs its op's, counted as the op on the cell's first (preprocessed)
    # input; choosing an input costs nothing of its own (0 in every row). (A reduction cell's op on a
    # later node runs at stride 1 on a reduced state: the same output size as on the first input.)

    def cost_inputs(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self.kind == 'input':
            return (), {}
        processed = preprocess_cell_inputs(self.module.num_predecessors, *args)
        return (self.module.preprocessor(processed)[0],), {}

    def forward_candidate(self, k: int, *args: Any, **kwargs: Any) -> Any:
        return self.candidate_module(k)(*args) if self.kind == 'op' else None  # type: ignore[misc]

    def candidate_module(self, k: int) -> nn.Module | None:
        if self.kind == 'input':
            return None
        return self.module.ops[self.node - self.module.num_predecessors][0][self.names[k]]


class _OtherInputs:
    """What the core calls as ``alternatives(j, *states)`` for a slot's input choice: the drawn op as
    built for input ``j`` (its edge's), on state ``j``."""

    __slots__ = ('edges', 'op')

    def __init__(self, edges: Sequence[nn.ModuleDict], op: str):
        self.edges, self.op = edges, op

    def __call__(self, j: int, *states: torch.Tensor) -> torch.Tensor:
        return self.edges[j][self.op](states[j])


class ProxylessCell(SiteHolder):
    """ProxylessNAS's cell (see the module doc): a mixin in front of NNI's ``PathSamplingCell``, whose
    attributes it uses (``ops``: per node, one ``ModuleDict`` of candidates per input; ``op_names``,
    ``num_nodes``, ``num_ops_per_node``, ``num_predecessors``, ``preprocessor``, ``postprocessor``,
    ``concat_dim``). The adapters give :meth:`_slot_labels` (NNI's labels of a slot) and
    :meth:`_exported_input` (an input as NNI's export spells it)."""

    ops: nn.ModuleList
    op_names: list[str]
    num_nodes: int
    num_ops_per_node: int
    num_predecessors: int
    preprocessor: Any
    postprocessor: Any
    concat_dim: int
    _arch_alpha: nn.ParameterDict

    def _slot_labels(self, node: int, slot: int) -> tuple[str, str]:
        """``(op label, input label)`` of slot ``slot`` of node ``node``, as NNI's cell names them."""
        raise NotImplementedError

    @staticmethod
    def _exported_input(index: int) -> Any:
        raise NotImplementedError

    def _init_choices(self, memo: dict[str, Any], mutate_kwargs: dict[str, Any]) -> None:
        softmax = mutate_kwargs.get('softmax', nn.Softmax(-1))
        mode = mutate_kwargs.get('proxyless_mode', 'full')
        self._arch_alpha = nn.ParameterDict()
        self._softmax = softmax
        slots: list[tuple[int, CellChoice, CellChoice]] = []
        for node in range(self.num_predecessors, self.num_nodes + self.num_predecessors):
            for slot in range(self.num_ops_per_node):
                op_label, input_label = self._slot_labels(node, slot)
                choices = []
                for label, names, kind in ((op_label, list(self.op_names), 'op'), (input_label, list(range(node)),
                                                                                     'input')):
                    alpha = label_alpha(memo, label, len(names),
                                        f'{type(self).__name__} {label!r}: {len(names)} {kind}s')
                    self._arch_alpha[label] = alpha
                    choices.append(CellChoice(self, label, names, alpha, softmax, mode,
                                              kind, self._exported_input, node))
                slots.append((node, choices[0], choices[1]))
        self._slots = slots

    def choice_sites(self) -> list[CellChoice]:
        """Every slot's op and input choices, in node and slot order."""
        return [site for _, op, inputs in self._slots for site in (op, inputs)]

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self._arch_alpha.values())

    # NNI's supernet-module interface --------------------------------------------------------------------

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Each slot's op and input from ``memo`` where it names them, else drawn from their alphas."""
        result = {}
        for site in self.choice_sites():
            if site.label in memo:
                site.index = site.ctx.resample(site.index_of_exported(memo[site.label]))
            else:
                site.index = site.ctx.resample()
            result[site.label] = site.exported(site.index)
        return result

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        """The most probable op and input of each slot the memo does not name (the first of equals)."""
        return {site.label: site.exported(site.most_probable()) for site in self.choice_sites()
                if site.label not in memo}

    def forward(self, *inputs: Any) -> Any:
        processed = preprocess_cell_inputs(self.num_predecessors, *inputs)
        states: list[torch.Tensor] = self.preprocessor(processed)
        tapping = torch.is_grad_enabled()
        slots = iter(self._slots)
        for node, edges in enumerate(self.ops, start=self.num_predecessors):
            current = []
            for _ in range(self.num_ops_per_node):
                _, op_site, input_site = next(slots)
                if op_site.index is None or input_site.index is None:
                    raise RuntimeError(f'{op_site._name()}: resample() needs to be called before forward.')
                j, name = input_site.index, self.op_names[op_site.index]
                out = edges[j][name](states[j])
                if tapping:
                    out = op_site.ctx.tap([edges[j][n] for n in self.op_names], (states[j],), None, op_site.index,
                                          op_site._alpha_now(), out)
                    out = input_site.ctx.tap(_OtherInputs(edges, name), tuple(states[:node]), None, j,
                                             input_site._alpha_now(), out)
                current.append(out)
            states.append(sum(current))
        merged = torch.cat(states[self.num_predecessors:], self.concat_dim)
        return self.postprocessor(merged, processed)
