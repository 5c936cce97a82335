"""A model holding our layers copies, pickles and saves like one holding NNI's."""

import copy
import io
import pickle

import pytest
import torch

from conftest import assert_steps_equal, build, train_step


def roundtrip(net, how: str):
    if how == 'deepcopy':
        return copy.deepcopy(net)
    if how == 'pickle':
        return pickle.loads(pickle.dumps(net))
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize('how', ['deepcopy', 'pickle', 'torch.save'])
@pytest.mark.parametrize('softmax', ['softmax', 'gumbel'])
def test_copies_train_like_the_original(how, softmax):
    net = build('rs', softmax)
    train_step(net, seed=1)  # leaves a gradient and possibly saved entries behind
    saved_before = [len(m.ctx) for m in net.mixed()]
    copied = roundtrip(net, how)
    reference = roundtrip(build('nni', softmax), how)
    reference.load_state_dict(net.state_dict())

    for module in copied.mixed():
        # Hooks are attached to each forward's output, so nothing is registered on the module;
        # the copied context holds the copied alpha.
        assert not module._backward_hooks
        assert module.ctx.arch_alpha is module._arch_alpha
        assert module.ctx.softmax is module._softmax
        assert len(module.ctx) == 0
    assert copied.second._arch_alpha is copied.third._arch_alpha  # sharing survives

    for step in range(3):
        assert_steps_equal(train_step(copied, seed=10 + step), train_step(reference, seed=10 + step))
    # Training the copy left the original untouched.
    assert [len(m.ctx) for m in net.mixed()] == saved_before
    assert not torch.equal(net.head.weight, copied.head.weight)


def test_layers_pickle_on_their_own():
    net = build('rs')
    layer = pickle.loads(pickle.dumps(net.first))
    assert layer.ctx.label == 'first'
    assert layer.op_names == net.first.op_names
    torch.testing.assert_close(layer._arch_alpha, net.first._arch_alpha)
