"""``proxyless_rs.Resampler`` draws what NNI's one-shot loop draws (``memo.update(module.resample(memo))``
over every supernet module, in module order), under both NNI versions: the same memo, the same
paths, the same random numbers taken, on mixed layers sharing a label, mixed inputs, value choices
of mixed operations, cells and a depth expression, in both modes, with a memo that fixes labels.
The strategies draw through it (``resample()`` of the one-shot module), so their regression against
NNI's strategies (tests/test_strategy.py, tests/test_regression.py) runs it too."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

import proxyless_rs
from conftest import build, resample_in_order
from value_spaces import Base, Conv2d, cell_space, choice, space, supernet

pytestmark = pytest.mark.regression


def supernet_modules(model: nn.Module) -> list[nn.Module]:
    """NNI 3.0's ``supernet_modules()``: every ``BaseSuperNetModule`` in ``model.modules()``'s order."""
    return [m for m in model.modules() if isinstance(m, BaseSuperNetModule)]


def layer_paths(modules: list[nn.Module]) -> list[tuple]:
    return [(m.__dict__.get('_sample_idx'), m.__dict__.get('_sampled')) for m in modules
            if isinstance(m, proxyless_rs.ProxylessMixedLayer)]


@space
class ConvSpace(Base):
    """A width shared by two convolutions and a kernel size: value choices of mixed operations."""

    def __init__(self):
        super().__init__()
        width = choice('width', [4, 8, 6])
        kernel = choice('ks', [3, 5])
        self.conv = Conv2d(2, width, kernel_size=kernel, padding=kernel // 2)
        self.proj = Conv2d(width, 3, kernel_size=1)

    def forward(self, x):
        return self.proj(torch.relu(self.conv(x)))


def layer_net(mode: str) -> nn.Module:
    net = build('rs')
    for layer in net.mixed():
        layer.mode = mode
    return net


MODELS = {
    'layers and inputs': layer_net,
    'value choices': lambda mode: supernet(ConvSpace(), mode=mode),
    'cells and a depth expression': lambda mode: supernet(cell_space(), mode=mode),
}


def draws(model: nn.Module, draw, seed: int, steps: int, memo: dict | None) -> tuple:
    """``steps`` draws from ``seed``: each memo, the mixed layers' paths, and the next random number."""
    torch.manual_seed(seed)
    out = []
    for _ in range(steps):
        out.append((draw(None if memo is None else dict(memo)), layer_paths(supernet_modules(model))))
    return out, torch.rand(1).item()


@pytest.mark.parametrize('mode', ['full', 'two'])
@pytest.mark.parametrize('name', list(MODELS))
def test_the_draws_are_nnis_loops(name, mode):
    model = MODELS[name](mode)
    modules = supernet_modules(model)
    resampler = proxyless_rs.Resampler(model)
    assert resampler.modules == modules
    fixed = {'layers and inputs': {'shared': 'tanh'}, 'value choices': {'ks': 5},
             'cells and a depth expression': {'depth': 2}}[name]
    for memo in (None, fixed):
        for seed in range(3):
            ours = draws(model, resampler, seed, 6, memo)
            theirs = draws(model, lambda m: resample_in_order(modules, m), seed, 6, memo)
            assert ours == theirs
            if memo is not None:
                assert all(memo.items() <= drawn.items() for drawn, _ in ours[0])
    # every label was drawn, and more than one value of some (the draws are not all one path)
    drawn = [d for d, _ in draws(model, resampler, 0, 12, None)[0]]
    assert set(drawn[0]) == set(resample_in_order(modules))
    assert any(len({d[label] for d in drawn}) > 1 for label in drawn[0])


def test_layers_sharing_a_label_take_the_first_draw():
    net = build('rs')
    resampler = proxyless_rs.Resampler(net)
    for seed in range(10):
        torch.manual_seed(seed)
        memo = resampler()
        assert net.second.active_index == net.third.active_index
        assert memo['shared'] == net.third.names[net.third.active_index]


def test_a_memo_choice_that_is_not_a_candidate_is_refused_as_by_the_layer():
    net = build('rs')
    with pytest.raises(ValueError, match="memo chose 'nope', which is not one of its candidates") as ours:
        proxyless_rs.Resampler(net)({'first': 'nope'})
    with pytest.raises(ValueError) as layers:
        net.first.resample({'first': 'nope'})
    assert str(ours.value) == str(layers.value)


def test_a_module_with_its_own_resample_is_called():
    class Counting(proxyless_rs.ProxylessMixedLayer):
        calls = 0

        def resample(self, memo):
            type(self).calls += 1
            return super().resample(memo)

    net = build('rs')
    net.first = Counting([('a', nn.Linear(8, 8)), ('b', nn.Identity())], nn.Parameter(torch.zeros(2)),
                         nn.Softmax(-1), 'first')
    patched = []
    original = net.second.resample

    def second_resample(memo):  # a resample patched on the instance
        patched.append(dict(memo))
        return original({**memo, 'shared': 'dropout'})

    net.second.resample = second_resample
    memo = proxyless_rs.Resampler(net)()
    assert Counting.calls == 1 and len(patched) == 1
    assert memo['shared'] == 'dropout' and net.third.names[net.third.active_index] == 'dropout'


def test_modules_are_given_or_found():
    net = build('rs')
    assert proxyless_rs.Resampler(modules=net.mixed()[::-1]).modules == net.mixed()[::-1]
    with pytest.raises(TypeError, match='not both'):
        proxyless_rs.Resampler(net, modules=net.mixed())
    assert proxyless_rs.Resampler(nn.Linear(2, 2))() == {}
