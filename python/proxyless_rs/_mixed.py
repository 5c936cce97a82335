"""ProxylessNAS on NNI's mixed operations (value choices inside modules), whichever NNI is installed
(no NNI import here: ``nni.v2.mixed`` and ``nni.v3.mixed`` put :class:`ProxylessMixedOpPolicy` in
front of that NNI's ``MixedOperationSamplingPolicy`` and say how its value choices are read).

NNI's mixed operations (``MixedConv2d``, ``MixedLinear``, ``MixedBatchNorm2d``, ``MixedLayerNorm``,
``MixedMultiHeadAttention``, and those a space registers, e.g. AutoFormer's position embedding and
class token) hold the largest weights and slice them for the values they are given
(``forward_with_args``); a *sampling policy* says which values. This module is the ProxylessNAS
policy:

- **One draw per label per step** from ``softmax(alpha)``: the first operation that resamples a
  label draws it, every other one takes it from NNI's memo (a width shared by a convolution and the
  next BatchNorm, AutoFormer's ``embed_dim`` in every block). The forward runs the drawn
  configuration only: sliced weights, one path.
- **Binary gates.** Each label of each operation is a choice of the Rust core (a
  :class:`ValueChoiceSite`), whose alternatives are the label's values: the operation's output
  passes through one gradient tap per label, and in backward alternative ``k`` is the operation
  evaluated again on the call's saved input with that label at value ``k`` (every other label at
  its draw), dotted with the output gradient: ``b_k = <o_k, dL/do>``, ``dL/dalpha_i =
  p_i (b_i - sum_j p_j b_j)``, summed over every operation that uses the label (the chain rule for a
  gate shared by several modules, as for a label shared by several layer choices).
- **Values that change shapes** (widths, heads, expansion ratios, embedding sizes): ``o_k`` is put
  into the sampled output's shape as weight sharing itself relates the two, which is FBNetV2's
  channel mask on the single path: channel (feature) ``c`` of value ``k`` is channel ``c`` of the
  supernet (prefix slicing), so the channels ``k`` lacks are zeros and those the sampled output
  lacks are dropped (nothing downstream read them in this step, so their gradient is taken as 0).
  The input is fitted the same way to what value ``k`` reads (a prefix, or zeros appended). A
  convolution's spatial size changed by a kernel size, padding or dilation is fitted about the
  centre (where the same pixels are); by a stride, by nearest neighbour (a stride-2 output is the
  stride-1 output at every other pixel). Values that keep shapes (kernel sizes with their padding,
  dilation with its padding, heads at a fixed width) need no fitting: their gate is exact.
  Cost: ``n - 1`` extra forwards of the operation per label per call, in backward, under
  ``no_grad``, one at a time (no extra memory held), as a layer choice's unsampled candidates.
  ``docs/value-choices.md`` states the estimator in full, with its tests.

Where the values of a label change what an operation reads (``in_channels``, ``in_features``,
``num_features``, ``normalized_shape``, ``embed_dim``), the operation's input sizes are looked up
in :data:`INPUT_SIZES` by its class (the adapters register NNI's); register a space's own
operation with :func:`register_input_sizes`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from ._layer import label_alpha
from ._site import ChoiceSite
from ._torch_compat import is_compiling, mark_dynamo_disabled

__all__ = ['ProxylessMixedOpPolicy', 'ValueChoiceSite', 'OperationShapes', 'INPUT_SIZES', 'register_input_sizes',
           'mixed_operations']


# --- what an operation reads, and how its outputs are fitted ---------------------------------------

InputSizes = Callable[[Mapping[str, Any]], Mapping[Any, Mapping[int, int]]]


@dataclasses.dataclass(frozen=True)
class OperationShapes:
    """How a mixed operation's shapes follow its arguments.

    ``inputs(arguments)`` gives, for each input that some argument sizes, ``{dim: size}`` (an input
    is named by its position and, for keyword arguments, by its name: ``(0, 'query')``);
    ``spatial`` the output dims that are spatial (fitted about the centre, or by nearest neighbour
    where ``stride`` differs), every other dim being fitted by prefix.
    """

    inputs: InputSizes
    spatial: tuple[int, ...] = ()


INPUT_SIZES: dict[type | str, OperationShapes] = {}
"""The shapes of each mixed operation class, by the class or its ``module.qualname`` (looked up
along the operation's MRO)."""


def register_input_sizes(cls: type | str, inputs: InputSizes, spatial: Sequence[int] = ()) -> None:
    """Says which input sizes the arguments of mixed operation ``cls`` (and its subclasses) set, so
    that its binary gates can evaluate a value that changes them: ``inputs(arguments)`` returns
    ``{input: {dim: size}}``, an input named by its position, or ``(position, keyword)``. ``cls``
    may be given as ``'module.qualname'`` (a class of a module not imported yet)."""
    INPUT_SIZES[cls] = OperationShapes(inputs, tuple(spatial))


def _shapes_of(operation: nn.Module) -> OperationShapes | None:
    for cls in type(operation).__mro__:
        shapes = INPUT_SIZES.get(cls) or INPUT_SIZES.get(f'{cls.__module__}.{cls.__qualname__}')
        if shapes is not None:
            return shapes
    return None


def _fit(t: torch.Tensor, dim: int, size: int, how: str) -> torch.Tensor:
    """``t`` with dim ``dim`` made ``size`` long: a prefix kept or zeros appended (``'prefix'``),
    about the centre (``'center'``), or nearest-neighbour indices (``'nearest'``)."""
    n = t.shape[dim]
    if n == size:
        return t
    if how == 'nearest':
        index = torch.div(torch.arange(size, device=t.device) * n, size, rounding_mode='floor')
        return t.index_select(dim, index)
    before = (n - size) // 2 if how == 'center' else 0
    if n > size:
        return t.narrow(dim, before, size)
    before = (size - n) // 2 if how == 'center' else 0
    pieces = []
    shape = list(t.shape)
    if before:
        shape[dim] = before
        pieces.append(t.new_zeros(shape))
    pieces.append(t)
    shape[dim] = size - n - before
    pieces.append(t.new_zeros(shape))
    return torch.cat(pieces, dim)


def _fit_to(t: torch.Tensor, shape: Sequence[int], spatial: Sequence[int], nearest: bool) -> torch.Tensor:
    if t.dim() != len(shape):
        raise RuntimeError(f'an alternative value returned a tensor of {t.dim()} dims where the sampled value '
                           f'returned {len(shape)}')
    spatial_dims = {d % t.dim() for d in spatial}
    for dim, size in enumerate(shape):
        how = ('nearest' if nearest else 'center') if dim in spatial_dims else 'prefix'
        t = _fit(t, dim, size, how)
    return t


def _flat(output: Any) -> list[Any]:
    return list(output) if isinstance(output, (tuple, list)) else [output]


def _shapes(output: Any) -> list[torch.Size | None]:
    return [t.shape if isinstance(t, torch.Tensor) else None for t in _flat(output)]


@contextlib.contextmanager
def _running_statistics_frozen(operation: nn.Module) -> Iterator[None]:
    """Normalization layers of ``operation`` in training mode use the batch's statistics without
    updating their running ones: an alternative evaluated in backward reads inputs fitted with
    zeros, which must not enter the statistics that the sampled forward keeps."""
    frozen = [m for m in operation.modules()
              if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats]
    for m in frozen:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in frozen:
            m.track_running_stats = True


# --- one label of one operation, as a choice of the core -------------------------------------------

class ValueChoiceSite(ChoiceSite):
    """One value choice (label) of one mixed operation, as the core's choice: its alternatives are
    the label's values (see :class:`proxyless_rs._site.ChoiceSite`)."""

    noun = 'value'

    def __init__(self, operation: nn.Module, label: str, values: list, alpha: torch.Tensor, softmax: nn.Module,
                 mode: str, where: str | None):
        name = f'{type(operation).__name__}{"" if where is None else f" {where!r}"} (value choice {label!r})'
        super().__init__(operation, label, values, alpha, softmax, mode, name)

    def forward_candidate(self, k: int, *args: Any, **kwargs: Any) -> Any:
        """The operation with this label at value ``k`` and its other labels at their first values
        on a call's arguments (fitted to what those values read), its output as it is: what
        profiling and counting measure as this value's cost."""
        return self.module.sampling_policy.evaluate(self.module, self.leaves_at(k), args, kwargs)

    def leaves_at(self, k: int) -> dict[str, Any]:
        """``{label: value}`` of the operation's labels: this one at value ``k``, the others at their first."""
        sites = self.module.sampling_policy.sites
        return {label: site.names[k if site is self else 0] for label, site in sites.items()}


class _Evaluation:
    """What the core calls as ``alternatives(k, *args, **kwargs)`` for one label of one call: the
    operation with the label at value ``k`` and the other labels at their values in that call, on
    the saved arguments, fitted to the sampled output's shapes."""

    __slots__ = ('operation', 'label', 'values', 'drawn', 'shapes')

    def __init__(self, operation: nn.Module, label: str, values: list, drawn: dict[str, Any],
                 shapes: list[torch.Size | None]):
        self.operation, self.label, self.values, self.drawn, self.shapes = operation, label, values, drawn, shapes

    def __call__(self, k: int, *args: Any, **kwargs: Any) -> Any:
        policy = self.operation.sampling_policy
        leaves = {**self.drawn, self.label: self.values[k]}
        with _running_statistics_frozen(self.operation):
            output = policy.evaluate(self.operation, leaves, args, kwargs)
        stride = policy.arguments(self.operation, leaves).get('stride')
        nearest = stride is not None and stride != policy.arguments(self.operation, self.drawn).get('stride')
        shapes = _shapes_of(self.operation)
        spatial = shapes.spatial if shapes is not None else ()
        items = _flat(output)
        if len(items) != len(self.shapes):
            return output  # the core says what differs
        fitted = [_fit_to(t, shape, spatial, nearest) if isinstance(t, torch.Tensor) and shape is not None
                  and t.shape != shape else t for t, shape in zip(items, self.shapes)]
        if isinstance(output, (tuple, list)):
            return type(output)(fitted)
        return fitted[0]


# --- the policy ------------------------------------------------------------------------------------

class ProxylessMixedOpPolicy:
    """ProxylessNAS for one mixed operation of NNI (see the module doc). The adapters subclass it
    with NNI's ``MixedOperationSamplingPolicy`` and provide :meth:`leaves` (the labels and their
    values) and :meth:`compose` (an argument's value from the labels' values).

    The operation gets ``_arch_alpha`` (an ``nn.ParameterDict``, label to alpha, shared through NNI's
    memo by every operation of the label) and ``_softmax``, as under NNI's differentiable policy, and
    a forward hook that passes its output through one gradient tap per label.
    """

    _arch_parameter_names = ['_arch_alpha']
    _own_arch: bool | None = None
    """What ``parameters()`` gives without ``arch``: None every parameter, False all but the alphas."""

    # What the adapters provide.
    @staticmethod
    def leaves(operation: nn.Module) -> dict[str, list]:
        """``{label: values}`` of the value choices the operation's arguments depend on."""
        raise NotImplementedError

    @staticmethod
    def compose(expression: Any, leaves: Mapping[str, Any]) -> Any:
        """The value of a mutable argument given each label's value."""
        raise NotImplementedError

    @staticmethod
    def sliced_weights(operation: nn.Module, arguments: Mapping[str, Any]) -> Mapping[str, Any]:
        """The operation's parameters and buffers sliced for ``arguments`` (``argument_list``'s), by
        state dict key (NNI 3.0's ``freeze_weight``, NNI 2.10's ``slice_param``)."""
        raise NotImplementedError

    @staticmethod
    def construct(cls: type, kwargs: Mapping[str, Any]) -> nn.Module:
        """``cls(**kwargs)``: a plain operation of the child network."""
        return cls(**kwargs)

    def __init__(self, operation: nn.Module, memo: dict[str, Any], mutate_kwargs: dict[str, Any]) -> None:
        softmax = mutate_kwargs.get('softmax', nn.Softmax(-1))
        mode = mutate_kwargs.get('proxyless_mode', 'full')
        where = mutate_kwargs.get('proxyless_module_name')
        operation._arch_alpha = nn.ParameterDict()
        operation._softmax = softmax
        self.sites: dict[str, ValueChoiceSite] = {}
        for label, values in self.leaves(operation).items():
            alpha = label_alpha(memo, label, len(values), f'{type(operation).__name__} {where or ""}: value choice '
                                                          f'{label!r} has {len(values)} values {values}')
            operation._arch_alpha[str(label)] = alpha
            self.sites[str(label)] = ValueChoiceSite(operation, str(label), values, alpha, softmax, mode, where)
        # Argument values by the labels' values: composing NNI's expressions costs tens of microseconds.
        self._arguments: dict[tuple, dict[str, Any]] = {}
        self._current: dict[str, Any] | None = None
        operation.arch_parameters = functools.partial(_arch_parameters, operation)
        # parameters(arch=True): the alphas, arch=False: all but them, under both NNI versions (as a
        # layer's); without arch, the NNI's own (NNI 2.10's policy leaves the alphas out, 3.0's keeps them).
        operation.parameters = functools.partial(_parameters, operation, self._own_arch)
        operation.named_parameters = functools.partial(_named_parameters, operation, self._own_arch)
        if self.sites:
            operation.register_forward_hook(_tap_operation, with_kwargs=True)

    # NNI's policy interface -------------------------------------------------------------------------

    def resample(self, operation: nn.Module, memo: dict[str, Any]) -> dict[str, Any]:
        """Each label from ``memo`` if it names it, else drawn from ``softmax(alpha)`` (one draw per
        label per step: the first operation of a label draws, the others find it in the memo)."""
        result = {}
        for label, site in self.sites.items():
            if label in memo:
                site.index = site.ctx.resample(site.index_of(memo[label]))
            else:
                site.index = site.ctx.resample()
            result[label] = site.names[site.index]
        self._current = self.arguments(operation, result)
        return result

    def export(self, operation: nn.Module, memo: dict[str, Any]) -> dict[str, Any]:
        """The most probable value of each label the memo does not fix (the first of equals)."""
        result = {}
        for label, site in self.sites.items():
            if label in memo:
                continue
            result[label] = site.names[site.most_probable()]
        return result

    def export_probs(self, operation: nn.Module, memo: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError  # each NNI spells it its own way

    def forward_argument(self, operation: nn.Module, name: str) -> Any:
        if name not in operation.mutable_arguments:
            return operation.init_arguments[name]
        if self._current is None:
            raise RuntimeError(f'{type(operation).__name__}: resample() needs to be called before forward.')
        return self._current[name]

    # What the sites and the core use -----------------------------------------------------------------

    def drawn(self) -> dict[str, Any]:
        """``{label: value}`` of the current draw."""
        return {label: site.names[site.index] for label, site in self.sites.items() if site.index is not None}

    def arguments(self, operation: nn.Module, leaves: Mapping[str, Any]) -> dict[str, Any]:
        """Every argument of ``argument_list`` given each label's value."""
        key = tuple(leaves.get(label) for label in self.sites)
        found = self._arguments.get(key)
        if found is None:
            found = {name: self.compose(operation.mutable_arguments[name], leaves)
                     if name in operation.mutable_arguments else operation.init_arguments[name]
                     for name in operation.argument_list}
            self._arguments[key] = found
        return found

    def evaluate(self, operation: nn.Module, leaves: Mapping[str, Any], args: tuple, kwargs: dict) -> Any:
        """The operation at ``leaves`` on ``args`` / ``kwargs``, its inputs fitted to what those values read."""
        arguments = self.arguments(operation, leaves)
        shapes = _shapes_of(operation)
        if shapes is not None:
            args, kwargs = _fit_inputs(shapes.inputs(arguments), args, kwargs)
        return operation.forward_with_args(*[arguments[name] for name in operation.argument_list], *args, **kwargs)


def _arch_parameters(operation: nn.Module) -> Iterator[nn.Parameter]:
    """The operation's alphas (NNI 3.0's one-shot modules collect ``arch_parameters()``)."""
    yield from operation._arch_alpha.values()


def _named_parameters(operation: nn.Module, own: bool | None, *args: Any, arch: bool | None = None,
                      **kwargs: Any) -> Iterator[tuple[str, nn.Parameter]]:
    arch = own if arch is None else arch
    for name, p in nn.Module.named_parameters(operation, *args, **kwargs):
        if arch is None or name.startswith('_arch_alpha.') == arch:
            yield name, p


def _parameters(operation: nn.Module, own: bool | None, *args: Any, **kwargs: Any) -> Iterator[nn.Parameter]:
    for _, p in _named_parameters(operation, own, *args, **kwargs):
        yield p


def _plain_class(bound_type: type) -> type:
    """The class of a child network's operation: the torch module ``bound_type`` wraps (NNI 3.0's
    ``MutableConv2d`` is an ``nn.Conv2d``, NNI 2.10's traced ``Conv2d`` too), else ``bound_type``
    itself (a space's own operation, e.g. AutoFormer's class token)."""
    for cls in bound_type.__mro__:
        # torch's own class (NNI 2.10's traced wrapper keeps its name and module, not its identity)
        if cls is not nn.Module and getattr(nn, cls.__name__, None) is cls:
            return cls
    return bound_type


def plain_operation(operation: nn.Module, leaves: Mapping[str, Any]) -> nn.Module:
    """The mixed ``operation`` as a plain module with every label at its value in ``leaves``, holding
    copies of the supernet's sliced weights (NNI's slicing): what :func:`proxyless_rs.freeze` puts in
    the child network. In eval mode it gives the operation's outputs at those values."""
    policy = operation.sampling_policy
    for label, site in policy.sites.items():
        if label not in leaves:
            raise KeyError(f'{site._name()}: the architecture has no value for {label!r}; it has {sorted(leaves)}')
        site.index_of(leaves[label])
    arguments = dict(operation.init_arguments)
    for name, expression in operation.mutable_arguments.items():
        arguments[name] = policy.compose(expression, leaves)
    cls = _plain_class(operation.bound_type)
    signature = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
        arguments = {k: v for k, v in arguments.items() if k in signature}
    plain = policy.construct(cls, arguments)
    like = next(iter(nn.Module.parameters(operation)), None)
    if like is not None:
        plain.to(device=like.device, dtype=like.dtype)
    state = {key: value for key, value in policy.sliced_weights(operation, policy.arguments(operation, leaves)).items()
             if isinstance(value, torch.Tensor)}
    for key, value in nn.Module.state_dict(operation).items():  # what NNI's slicing leaves out (BatchNorm's count)
        if key not in state and key in plain.state_dict() and not key.startswith('_arch_alpha.'):
            state[key] = value
    plain.load_state_dict(state, strict=True)
    return plain.train(operation.training)


def _fit_inputs(sizes: Mapping[Any, Mapping[int, int]], given_args: tuple, given_kwargs: dict) -> tuple[tuple, dict]:
    args, kwargs = list(given_args), dict(given_kwargs)
    for which, dims in sizes.items():
        position, keyword = which if isinstance(which, tuple) else (which, None)
        if position < len(args):
            container, key = args, position
        elif keyword is not None and keyword in kwargs:
            container, key = kwargs, keyword  # type: ignore[assignment]
        else:
            continue
        t = container[key]
        if not isinstance(t, torch.Tensor):
            continue
        for dim, size in dims.items():
            t = _fit(t, dim, int(size), 'prefix')
        container[key] = t
    return tuple(args), kwargs


_NOT_TRACEABLE = ('{}: torch.jit.trace cannot capture a ProxylessNAS mixed operation: it runs the values drawn at '
                  "each step and computes the architecture gradient in backward, so a trace would freeze one draw "
                  "and silently drop alpha's gradient. Export the architecture and trace the fixed network "
                  '(proxyless_rs.freeze).')


def _tap_operation(operation: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """The operation's forward hook: its output through one gradient tap per label (none where no
    backward can give an alpha a gradient)."""
    policy = operation.sampling_policy
    if not policy.sites:
        return None
    if torch.jit.is_tracing():
        raise RuntimeError(_NOT_TRACEABLE.format(type(operation).__name__))
    if not torch.is_grad_enabled():
        return None
    if is_compiling():
        return _tap_under_dynamo(operation, args, kwargs, output)
    return _tap(operation, policy, args, kwargs, output)


def _tap(operation: nn.Module, policy: ProxylessMixedOpPolicy, args: tuple, kwargs: dict, output: Any) -> Any:
    drawn = policy.drawn()
    shapes = _shapes(output)
    for label, site in policy.sites.items():
        if site.index is None:
            raise RuntimeError(f'{site._name()}: resample() needs to be called before forward.')
        evaluation = _Evaluation(operation, label, site.names, drawn, shapes)
        output = site.ctx.tap(evaluation, args, kwargs, site.index, site._alpha_now(), output)
    return output


def _tap_under_dynamo(operation: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """The taps where torch.compile traces the operation: run eagerly, behind a graph break."""
    return _tap(operation, operation.sampling_policy, args, kwargs, output)


mark_dynamo_disabled(
    _tap_under_dynamo,
    'proxyless_rs: a ProxylessNAS mixed operation taps its output for the binary-gate backward, which Dynamo '
    'cannot capture in a graph; compile without fullgraph=True',
)


KEPT_ATTRIBUTES = ('eps', 'momentum')
"""Arguments of NNI's mixed operations that a space may set on its module after construction (its
initializer sets BatchNorm's ``eps`` and ``momentum``, as NNI's hub spaces do): NNI builds the mixed
operation from the module's constructor arguments alone, and would lose them."""


def keeping_attributes(mutate: Callable) -> Callable:
    """``mutate`` (a mixed operation's mutation hook) that gives the operation the module's own values
    of :data:`KEPT_ATTRIBUTES` where they are not value choices: the supernet, its child and NNI's own
    frozen model then compute with the same ``eps``."""

    @functools.wraps(mutate)
    def hook(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]) -> Any:
        result = mutate(module, name, memo, mutate_kwargs)
        operation = result[0] if isinstance(result, tuple) else result
        if isinstance(getattr(operation, 'sampling_policy', None), ProxylessMixedOpPolicy):
            for argument in KEPT_ATTRIBUTES:
                if argument in operation.argument_list and argument not in operation.mutable_arguments \
                        and isinstance(getattr(module, argument, None), float):
                    value = getattr(module, argument)
                    operation.init_arguments[argument] = value
                    setattr(operation, argument, value)
        return result

    return hook


def mixed_operations(*modules: nn.Module) -> Iterator[nn.Module]:
    """The mixed operations under ProxylessNAS's policy inside ``modules``."""
    for root in modules:
        for module in root.modules():
            if isinstance(getattr(module, 'sampling_policy', None), ProxylessMixedOpPolicy):
                yield module


def value_choice_sites(*modules: nn.Module) -> Iterator[ValueChoiceSite]:
    """Every label of every mixed operation inside ``modules``, in module order."""
    for operation in mixed_operations(*modules):
        yield from operation.sampling_policy.sites.values()
