"""proxyless_rs against NNI 2.10's own classes: same seeds, same answers."""

import pytest
import torch

from conftest import (
    DEVICES,
    IMPLEMENTATIONS,
    arch_parameters,
    assert_alpha_close,
    assert_steps_equal,
    build,
    requires_nni2,
    resample_in_order,
    train_step,
)

# Every test here compares with NNI 2.10's classes; tests/test_nni3.py does the same against NNI 3.0's.
pytestmark = [pytest.mark.regression, requires_nni2]

STEPS = 8


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('softmax', ['softmax', 'gumbel'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=['float32', 'float64'])
@pytest.mark.parametrize('extra_alpha_loss', [False, True], ids=['hook-only', 'extra-alpha-loss'])
def test_training_steps_match_nni(softmax, dtype, extra_alpha_loss, device):
    ours, theirs = build('rs', softmax, dtype).to(device), build('nni', softmax, dtype).to(device)
    samples = set()
    for step in range(STEPS):
        a = train_step(ours, seed=100 + step, extra_alpha_loss=extra_alpha_loss)
        b = train_step(theirs, seed=100 + step, extra_alpha_loss=extra_alpha_loss)
        assert_steps_equal(a, b, dtype)
        samples.add(tuple(sorted(a.sample.items())))
        assert any(g is not None and g.abs().sum() > 0 for g in a.alpha_grads.values())
    # The comparison means something only if several architectures were exercised.
    assert len(samples) > 1
    for (name, p), (_, q) in zip(arch_parameters(ours).items(), arch_parameters(theirs).items()):
        assert p.dtype == dtype and p.device.type == device
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_state_dict_and_parameter_names_match_nni():
    ours, theirs = build('rs'), build('nni')
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)
    for a, b in zip(ours.mixed(), theirs.mixed()):
        assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
        assert [n for n, _ in a.named_parameters(arch=True)] == [n for n, _ in b.named_parameters(arch=True)]
        assert len(list(a.parameters(arch=True))) == len(list(b.parameters(arch=True)))
    # A checkpoint of one loads into the other.
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())


def test_export_and_search_space_match_nni():
    ours, theirs = build('rs'), build('nni')
    for a, b in zip(ours.mixed(), theirs.mixed()):
        assert a.export({}) == b.export({})
        assert a.export_probs({}) == pytest.approx(b.export_probs({}))
        assert a.search_space_spec() == b.search_space_spec()
        assert getattr(a, 'op_names', None) == getattr(b, 'op_names', None)
        assert a.label == b.label


@pytest.mark.parametrize('device', DEVICES)
def test_resample_draws_the_same_paths_as_nni(device):
    ours, theirs = build('rs', 'gumbel').to(device), build('nni', 'gumbel').to(device)
    # Draws come from the generator of the alphas' device.
    rng_state = torch.cuda.get_rng_state if device == 'cuda' else torch.get_rng_state
    for seed in range(30):
        torch.manual_seed(seed)
        a = ours.resample()
        state_after_ours = rng_state()
        torch.manual_seed(seed)
        b = theirs.resample()
        assert a == b
        assert ours.first._sample_idx == theirs.first._sample_idx
        assert ours.first._sampled == theirs.first._sampled
        assert ours.pick._sampled == theirs.pick._sampled
        # The generator is left in the same state: the same random numbers were drawn.
        assert torch.equal(state_after_ours, rng_state())


def test_memo_fixes_the_paths_like_nni():
    ours, theirs = build('rs'), build('nni')
    memo = {'first': 'tanh', 'shared': 'dropout', 'pair': 'minus', 'pick': 2}
    for a, b in zip(ours.mixed(), theirs.mixed()):
        assert a.resample(memo) == b.resample(memo)
    a = train_step(ours, seed=7, memo=memo)
    b = train_step(theirs, seed=7, memo=memo)
    assert a.sample == b.sample == memo
    assert_steps_equal(a, b)


def test_mutation_hooks_build_our_layers_from_an_nni_model_space():
    """NNI's mutation machinery turns LayerChoice/InputChoice into our classes, as into NNI's."""
    import nni.retiarii.nn.pytorch as nn
    from nni.nas.oneshot.pytorch.base_lightning import no_default_hook, traverse_and_mutate_submodules
    from nni.retiarii import model_wrapper

    import proxyless_rs

    @model_wrapper
    class Space(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.LayerChoice([nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU())], label='op')
            self.skip = nn.InputChoice(2, 1, label='skip')

        def forward(self, x):
            y = self.conv(x)
            return self.skip([x, y])

    def mutate(layer_cls, input_cls):
        torch.manual_seed(0)
        model = Space()
        hooks = [layer_cls.mutate, input_cls.mutate, no_default_hook]
        modules = traverse_and_mutate_submodules(model, hooks, {}, topdown=True)
        return model, modules

    ours, our_modules = mutate(proxyless_rs.ProxylessMixedLayer, proxyless_rs.ProxylessMixedInput)
    theirs, _ = mutate(*IMPLEMENTATIONS['nni'])
    assert [type(m) for m in our_modules] == [proxyless_rs.ProxylessMixedLayer, proxyless_rs.ProxylessMixedInput]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for model in (ours, theirs):
        torch.manual_seed(3)
        resample_in_order((model.conv, model.skip))
        x = torch.randn(2, 4)
        model(x).sum().backward()
    torch.testing.assert_close(ours.conv._arch_alpha.grad, theirs.conv._arch_alpha.grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(ours.skip._arch_alpha.grad, theirs.skip._arch_alpha.grad, rtol=1e-5, atol=1e-8)


class Residual(torch.nn.Module):
    """x + mixed(x) with identity and zero candidates: the output can be the input tensor itself."""

    def __init__(self, impl, dim):
        super().__init__()
        layer_cls, _ = IMPLEMENTATIONS[impl]
        self.stem = torch.nn.Linear(dim, dim)
        self.block = layer_cls([('identity', torch.nn.Identity()), ('linear', torch.nn.Linear(dim, dim)),
                                ('zero', Zero())], torch.nn.Parameter(torch.randn(3)), torch.nn.Softmax(-1), 'block')

    def forward(self, x):
        h = self.stem(x)
        return (h + self.block(h)).tanh().sum()


class Zero(torch.nn.Module):
    def forward(self, x):
        return x.mul(0.0)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('rows, dim', [(4, 8), (64, 600)], ids=['batched-gates', 'one-by-one-gates'])
@pytest.mark.parametrize('sampled', ['identity', 'linear', 'zero'])
def test_candidate_returning_its_input_inside_a_residual(rows, dim, sampled, device):
    """The hook must see the gradient of the layer's output only, not of the input it aliases.

    Also covers both binary-gate reductions: outputs up to kernel::BATCH_NUMEL_LIMIT elements are
    reduced together at the end (on the host, in f64), larger ones one by one with NNI's op.
    """
    grads = {}
    for impl in ('rs', 'nni'):
        torch.manual_seed(0)
        net = Residual(impl, dim).to(device)
        net.block.resample({'block': sampled})
        net(torch.randn(rows, dim).to(device)).backward()
        grads[impl] = (net.block._arch_alpha.grad, net.stem.weight.grad)
    assert grads['rs'][0].device.type == device
    assert_alpha_close(grads['rs'][0], grads['nni'][0])
    torch.testing.assert_close(grads['rs'][1], grads['nni'][1], rtol=0, atol=0)


class Transposed(torch.nn.Module):
    """A candidate whose output is not contiguous (column-major)."""

    def __init__(self, dim, dtype):
        super().__init__()
        self.linear = torch.nn.Linear(dim, dim, dtype=dtype)

    def forward(self, x):
        return self.linear(x).t().contiguous().t()


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('loss', ['sum', 'weighted', 'squares'])
@pytest.mark.parametrize('third', ['relu', 'transposed'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=['float32', 'float64'])
@pytest.mark.parametrize('rows, dim', [(4, 8), (64, 600)], ids=['small', 'large'])
def test_every_binary_gate_reduction_matches_nni(loss, third, dtype, rows, dim, device):
    """Whichever way the gates are reduced, the gradients are NNI's.

    Small contiguous host outputs are summed in one f64 loop (an expanded gradient, as `sum()`
    gives, is made contiguous first); a non-contiguous candidate output (`third='transposed'`)
    sends all of them through the tensor form; outputs above kernel::BATCH_NUMEL_LIMIT elements
    are reduced one by one. On an accelerator, all go through the tensor form on the device.
    """
    grads = {}
    for impl in ('rs', 'nni'):
        layer_cls, _ = IMPLEMENTATIONS[impl]
        torch.manual_seed(0)
        candidates = [('linear', torch.nn.Linear(dim, dim, dtype=dtype)),
                      ('tanh', torch.nn.Sequential(torch.nn.Linear(dim, dim, dtype=dtype), torch.nn.Tanh())),
                      ('third', Transposed(dim, dtype) if third == 'transposed'
                       else torch.nn.Sequential(torch.nn.Linear(dim, dim, dtype=dtype), torch.nn.ReLU()))]
        layer = layer_cls(candidates, torch.nn.Parameter(torch.randn(3, dtype=dtype)), torch.nn.Softmax(-1), 'gate')
        layer.to(device)
        layer.resample({'gate': 'linear'})
        x = torch.randn(rows, dim, dtype=dtype).to(device).requires_grad_()
        weights = torch.randn(rows, dim, dtype=dtype).to(device)
        out = layer(x)
        if loss == 'sum':
            out.sum().backward()
        elif loss == 'weighted':
            (out * weights).sum().backward()
        else:
            out.pow(2).mean().backward()
        grads[impl] = (layer._arch_alpha.grad, x.grad)
    assert grads['rs'][0].abs().sum() > 0
    assert_alpha_close(grads['rs'][0], grads['nni'][0], dtype)
    torch.testing.assert_close(grads['rs'][1], grads['nni'][1], rtol=0, atol=0)
