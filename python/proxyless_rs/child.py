"""The child network of a search: :func:`freeze` turns a supernet into a plain ``nn.Module`` with
the chosen architecture and the supernet's trained weights (once-for-all's ``get_active_subnet``).

What it builds, layer by layer: a mixed layer becomes a copy of its chosen candidate; a mixed input
becomes :class:`ChosenInput` (or :class:`ChosenInputs`, for several); a depth choice becomes an
``nn.Sequential`` of its first blocks, as many as the chosen depth (a depth expression's one-block
stage, :class:`ChosenDepth`, with the supernet's shape alignment); a cell becomes
:class:`ChosenCell`; a mixed operation (value choices in a ``Conv2d``, ``Linear``, ...) becomes the
plain torch module of its chosen values holding the supernet's sliced weights (NNI's slicing).
Everything else is copied as it is. The child holds no architecture parameter, no hook and no
module of proxyless_rs but the small selectors above, which TorchScript, tracing, ONNX export and
``torch.compile(fullgraph=True)`` take; in eval mode it gives the supernet's outputs with that
architecture fixed, bit for bit.
"""

from __future__ import annotations

import copy
from typing import Any, List, Mapping

import torch
import torch.nn as nn

from ._cell import ProxylessCell, preprocess_cell_inputs
from ._depth import ProxylessDepth
from ._layer import DepthChain, ProxylessLayer, ProxylessLayerChoice, _proxyless_layers, chosen_inputs
from ._mixed import ProxylessMixedOpPolicy, mixed_operations, plain_operation

__all__ = ['freeze', 'load_weights', 'ChosenInput', 'ChosenInputs', 'ChosenCell', 'ChosenDepth']


class ChosenInput(nn.Module):
    """The one input an input choice chose: ``inputs[index]``."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:  # noqa: UP006 (TorchScript reads List)
        return inputs[self.index]

    def extra_repr(self) -> str:
        return f'index={self.index}'


class ChosenInputs(nn.Module):
    """Several chosen inputs, reduced: their sum, or their mean (``mean=True``)."""

    def __init__(self, indices: list[int], mean: bool):
        super().__init__()
        self.indices = list(indices)
        self.mean = mean

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:  # noqa: UP006 (TorchScript reads List)
        out = inputs[self.indices[0]]
        for i in self.indices[1:]:
            out = out + inputs[i]
        if self.mean:
            out = out / len(self.indices)
        return out

    def extra_repr(self) -> str:
        return f'indices={self.indices}, mean={self.mean}'


class ChosenCell(nn.Module):
    """A searched cell with its ops and inputs chosen: each node sums its slots' chosen ops, each on
    its chosen input, and every node is concatenated, as the supernet's cell merges them. Its
    modules are named as NNI's frozen ``Cell`` names them (``preprocessor``, ``ops.<node>.<slot>``,
    ``postprocessor``), so NNI's own frozen model loads its weights by key."""

    def __init__(self, preprocessor: nn.Module, chosen: list[list[tuple[int, nn.Module]]], postprocessor: nn.Module,
                 concat_dim: int, num_predecessors: int):
        super().__init__()
        self.preprocessor = preprocessor
        self.ops = nn.ModuleList(nn.ModuleList(op for _, op in node) for node in chosen)
        self.postprocessor = postprocessor
        self.input_indices = [[j for j, _ in node] for node in chosen]
        self.concat_dim = concat_dim
        self.num_predecessors = num_predecessors

    def forward(self, *inputs: Any) -> Any:
        processed = preprocess_cell_inputs(self.num_predecessors, *inputs)
        states = self.preprocessor(processed)
        for ops, indices in zip(self.ops, self.input_indices):
            states.append(sum(op(states[j]) for op, j in zip(ops, indices)))
        return self.postprocessor(torch.cat(states[self.num_predecessors:], self.concat_dim), processed)

    def extra_repr(self) -> str:
        return f'inputs={self.input_indices}'


class ChosenDepth(nn.Module):
    """A searched depth expression's repeat of one block whose stage input, passed on as the first
    element of its output, goes through ``first_cell_transformation``, as the supernet aligns it (NNI's
    NDS stages; NNI's own frozen stage of one cell has no such module: its next cell takes the other
    shape)."""

    def __init__(self, block: nn.Module, first_cell_transformation: nn.Module):
        super().__init__()
        self.blocks = nn.Sequential(block)
        self.first_cell_transformation = first_cell_transformation

    def forward(self, x: Any) -> Any:
        x = self.blocks(x)
        return (self.first_cell_transformation(x[0]), *x[1:])


def _frozen_depth(module: ProxylessDepth, arch: Mapping[str, Any], reduction: str | None) -> nn.Module:
    choice = module._choice
    depth = module.depths[choice.index_of(_chosen(choice, arch, choice.label))]
    blocks = [_frozen(block, arch, reduction) for block in module.blocks[:depth]]
    if depth == 1 and module.first_cell_transformation is not None:
        return ChosenDepth(blocks[0], _frozen(module.first_cell_transformation, arch, reduction))
    return nn.Sequential(*blocks)


def _frozen_cell(cell: ProxylessCell, arch: Mapping[str, Any], reduction: str | None) -> nn.Module:
    chosen: list[list[tuple[int, nn.Module]]] = []
    for node, op_site, input_site in cell._slots:
        for site in (op_site, input_site):
            if site.label not in arch:
                raise KeyError(f'{site._name()}: the architecture has no choice for {site.label!r}; '
                               f'it has {sorted(map(str, arch))}')
        j = input_site.index_of_exported(arch[input_site.label])
        name = op_site.names[op_site.index_of_exported(arch[op_site.label])]
        if node - cell.num_predecessors == len(chosen):
            chosen.append([])
        chosen[-1].append((j, _frozen(cell.ops[node - cell.num_predecessors][j][name], arch, reduction)))
    return ChosenCell(_frozen(cell.preprocessor, arch, reduction), chosen, _frozen(cell.postprocessor, arch, reduction),
                      cell.concat_dim, cell.num_predecessors)


def _export(model: nn.Module) -> dict[str, Any]:
    """The architecture the layers and mixed operations export (the most probable choices), in module order."""
    memo: dict[str, Any] = {}
    operations = {id(op) for op in mixed_operations(model)}
    for module in model.modules():
        if isinstance(module, (ProxylessLayer, DepthChain, ProxylessCell, ProxylessDepth)) or id(module) in operations:
            memo.update(module.export(memo))
    return memo


def _chosen(module: Any, arch: Mapping[str, Any], label: Any) -> Any:
    if label not in arch:
        raise KeyError(f'{module._name()}: the architecture has no choice for {label!r}; '
                       f'it has {sorted(map(str, arch))}')
    return arch[label]


def _frozen(module: nn.Module, arch: Mapping[str, Any], reduction: str | None) -> nn.Module:
    if isinstance(module.__dict__.get('sampling_policy'), ProxylessMixedOpPolicy):
        return plain_operation(module, arch)
    if isinstance(module, ProxylessCell):
        return _frozen_cell(module, arch, reduction)
    if isinstance(module, ProxylessDepth):
        return _frozen_depth(module, arch, reduction)
    if isinstance(module, DepthChain):
        depth = arch.get(module.depth_label)
        if depth is None:  # the chain's own choices: its first blocks taken
            depth = module.min_depth + sum(_chosen(layer, arch, layer.label) == '1' for layer in module._choices())
        return nn.Sequential(*[_frozen(module._block(i), arch, reduction) for i in range(int(depth))])
    if isinstance(module, ProxylessLayerChoice):
        name = _chosen(module, arch, module.label)
        if name not in module.names:
            raise ValueError(f'{module._name()}: the architecture chose {name!r}, which is not one of its '
                             f'candidates {module.names}')
        return _frozen(module.candidate(module.names.index(name)), arch, reduction)
    if isinstance(module, ProxylessLayer):  # a mixed input
        # n_candidates: NNI's InputChoice's, which the mixin goes in front of.
        n = module.n_candidates  # type: ignore[attr-defined]
        indices = chosen_inputs(module._name(), _chosen(module, arch, module.label), n)
        if len(indices) == 1:
            return ChosenInput(indices[0])
        if reduction not in ('sum', 'mean'):
            raise ValueError(f'{module._name()}: the architecture chose the inputs {indices}; say how to reduce '
                             "them with reduction='sum' or 'mean' (NNI's mixed input does not keep the InputChoice's "
                             'reduction)')
        return ChosenInputs(indices, reduction == 'mean')
    for name, child in list(module._modules.items()):
        if child is not None:
            module._modules[name] = _frozen(child, arch, reduction)
    return module


def freeze(model: nn.Module, arch: Mapping[str, Any] | None = None, *, reduction: str | None = None) -> nn.Module:
    """The child network of ``model`` for ``arch``: a plain ``nn.Module`` holding copies of the
    supernet's trained weights (``model`` is left as it is).

    ``arch`` defaults to what the layers export (the most probable choice of each); it takes the
    output of ``export``, :func:`proxyless_rs.constrained_export` or a strategy's
    ``export_top_models()`` entry. A depth choice takes its depth from ``arch`` or, without it,
    from its chain's skip-or-block choices. An input choice that chose several inputs needs
    ``reduction`` (``'sum'`` or ``'mean'``).
    """
    if reduction not in (None, 'sum', 'mean'):
        raise ValueError(f"freeze: reduction must be 'sum', 'mean' or None, got {reduction!r}")
    arch = _export(model) if arch is None else dict(arch)
    child = _frozen(copy.deepcopy(model), arch, reduction)
    left = [type(m).__name__ for m in (*_proxyless_layers(child), *mixed_operations(child))]
    left += [type(m).__name__ for m in child.modules() if isinstance(m, (ProxylessCell, ProxylessDepth))]
    if left:  # a mixed layer no rule reached (e.g. inside a container freeze does not enter)
        raise TypeError(f'freeze: mixed layers are left in the child: {left}')
    return child


def load_weights(target: nn.Module, child: nn.Module) -> nn.Module:
    """Loads a child network's weights (:func:`freeze`'s) into ``target``, the same architecture built
    another way: NNI 3.0's ``ModelSpace.freeze(architecture)``, or the model space built under NNI
    2.10's ``fixed_arch(architecture)``. Returns ``target``.

    By key where the two state dicts have the same keys. Otherwise by position: NNI 2.10's hub spaces
    drop a skipped block from their ``nn.Sequential`` under ``fixed_arch`` (``simplify_sequential``),
    which renumbers the blocks after it, while the child keeps the skip in its place. The two must
    then hold the same number of entries, in the same order. Either way each entry must have the
    child's shape; the first that differs is named in a ``ValueError`` and nothing is loaded (NNI's
    frozen ``loose_end`` cell concatenates fewer nodes than the supernet's, which concatenates all).
    """
    source, destination = child.state_dict(), target.state_dict()
    if source.keys() == destination.keys():
        for key, mine in source.items():
            if mine.shape != destination[key].shape:
                raise ValueError(f'load_weights: entry {key!r} of the child ({tuple(mine.shape)}) does not match the '
                                 f"target's ({tuple(destination[key].shape)}): not the same architecture")
        target.load_state_dict(source)
        return target
    if len(source) != len(destination):
        raise ValueError(f'load_weights: the child has {len(source)} state entries, the target {len(destination)}: '
                         'not the same architecture')
    for (ours, mine), (theirs, their) in zip(source.items(), destination.items()):
        if mine.shape != their.shape or ours.rsplit('.', 1)[-1] != theirs.rsplit('.', 1)[-1]:
            raise ValueError(f'load_weights: entry {ours!r} of the child ({tuple(mine.shape)}) does not match '
                             f'{theirs!r} of the target ({tuple(their.shape)}) at the same position: not the same '
                             'architecture')
    target.load_state_dict(dict(zip(destination, source.values())))
    return target
