"""The input sizes of NNI's mixed operations, the same in both NNI versions (the classes are each
version's own, and the adapters register theirs): which input dims each argument sets, and which
output dims are spatial (see :mod:`proxyless_rs._mixed`)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .._mixed import register_input_sizes


def _layer_norm(arguments: Mapping[str, Any]) -> dict[Any, dict[int, int]]:
    shape = arguments['normalized_shape']
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return {0: {i - len(shape): size for i, size in enumerate(shape)}}


def _attention(arguments: Mapping[str, Any]) -> dict[Any, dict[int, int]]:
    embed = arguments['embed_dim']
    return {(0, 'query'): {-1: embed}, (1, 'key'): {-1: arguments.get('kdim') or embed},
            (2, 'value'): {-1: arguments.get('vdim') or embed}}


def _last_is_embedding(arguments: Mapping[str, Any]) -> dict[Any, dict[int, int]]:
    return {0: {-1: arguments['embed_dim']}}


_NATIVE = {
    'MixedConv2d': (lambda a: {0: {1: a['in_channels']}}, (-2, -1)),
    'MixedLinear': (lambda a: {0: {-1: a['in_features']}}, ()),
    'MixedBatchNorm2d': (lambda a: {0: {1: a['num_features']}}, ()),
    'MixedLayerNorm': (_layer_norm, ()),
    'MixedMultiHeadAttention': (_attention, ()),
}


def register_native_shapes(operations: Iterable[type], hub: str) -> None:
    """Registers the input sizes of NNI's native mixed operations and of AutoFormer's (in ``hub``,
    by name: the hub is imported by the space that uses them)."""
    for cls in operations:
        if cls.__name__ in _NATIVE:
            inputs, spatial = _NATIVE[cls.__name__]
            register_input_sizes(cls, inputs, spatial)
    # NNI 3.0's names, then NNI 2.10's.
    for name in ('MixedAbsolutePositionEmbedding', 'MixedClassToken', 'MixedAbsPosEmbed', 'MixedClsToken'):
        register_input_sizes(f'{hub}.{name}', _last_is_embedding)
