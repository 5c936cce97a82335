"""Bad input gets an error that names the problem, never a silently wrong gradient."""

import pytest
import torch
import torch.nn as nn

from proxyless_rs import ProxylessContext, ProxylessMixedInput, ProxylessMixedLayer
from proxyless_rs.nni.version import NNI3


class Returns(nn.Module):
    """A candidate returning whatever it is told to, computed from its input."""

    def __init__(self, kind: str):
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.kind = kind

    def forward(self, x):
        y = self.linear(x)
        return {
            'tensor': y,
            'set': {y},
            'dict': {'y': y, 'z': y * 2},
            'dict-with-str': {'y': y, 'name': 'y'},
            'other-keys': {'y': y, 'w': y * 2},
            'tuple-with-int': (y, 3),
            'pair': (y, y * 2),
            'none': None,
        }[self.kind]


def layer(*kinds: str, label: str = 'op') -> ProxylessMixedLayer:
    paths = [(f'c{i}', Returns(kind)) for i, kind in enumerate(kinds)]
    return ProxylessMixedLayer(paths, nn.Parameter(torch.zeros(len(kinds))), nn.Softmax(-1), label)


def test_forward_before_resample():
    with pytest.raises(RuntimeError, match=r"'op': resample\(\) needs to be called before forward"):
        layer('tensor', 'tensor')(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match=r"'pick': resample\(\) needs to be called"):
        ProxylessMixedInput(2, 1, nn.Parameter(torch.zeros(2)), nn.Softmax(-1), 'pick')([torch.randn(1)] * 2)


def test_alpha_length_must_match_the_candidates():
    paths = [('conv', nn.Identity()), ('pool', nn.Identity())]
    with pytest.raises(ValueError, match=r"'op': alpha has 3 entries, but there are 2 candidates \(conv, pool\)"):
        ProxylessMixedLayer(paths, nn.Parameter(torch.zeros(3)), nn.Softmax(-1), 'op')
    with pytest.raises(ValueError, match=r"'pick': alpha has 2 entries, but there are 3 candidates"):
        ProxylessMixedInput(3, 1, nn.Parameter(torch.zeros(2)), nn.Softmax(-1), 'pick')


def test_alpha_must_be_a_1d_tensor():
    with pytest.raises(ValueError, match=r"arch_alpha must be a 1-d tensor.*\[2, 1\]"):
        ProxylessMixedLayer([('a', nn.Identity()), ('b', nn.Identity())], nn.Parameter(torch.zeros(2, 1)),
                            nn.Softmax(-1), 'op')
    with pytest.raises(TypeError, match=r"arch_alpha must be a torch.Tensor, got list"):
        ProxylessContext([0.0, 1.0], nn.Softmax(-1))


def test_memo_naming_an_unknown_candidate():
    with pytest.raises(ValueError, match=r"'op': memo chose 'c7', which is not one of its candidates \['c0', 'c1'\]"):
        layer('tensor', 'tensor').resample({'op': 'c7'})
    pick = ProxylessMixedInput(2, 1, nn.Parameter(torch.zeros(2)), nn.Softmax(-1), 'pick')
    # NNI 3.0's memo holds a list of indices, NNI 2.10's one index.
    for bad in (2, -1, '0', True) + (([5], [], [True]) if NNI3 else ([0],)):
        with pytest.raises(ValueError, match=r"'pick': memo chose .*, but the choices are the input indices \[0, 1\]"):
            pick.resample({'pick': bad})


@pytest.mark.parametrize('kind, type_name', [('set', 'set'), ('none', 'NoneType')])
def test_sampled_candidate_returning_a_non_tensor(kind, type_name):
    op = layer(kind, 'tensor')
    op.resample({'op': 'c0'})
    with pytest.raises(TypeError, match=rf"ProxylessMixedLayer 'op': the sampled candidate 'c0' \(index 0\) returned "
                                        rf"{type_name}"):
        op(torch.randn(2, 3))
    # Checked under no_grad as well: the rule does not depend on grad mode.
    with torch.no_grad(), pytest.raises(TypeError, match=type_name):
        op(torch.randn(2, 3))


def test_other_candidate_returning_a_non_tensor_fails_in_backward():
    op = layer('tensor', 'set')
    op.resample({'op': 'c0'})
    out = op(torch.randn(2, 3))
    with pytest.raises(TypeError, match=r"ProxylessMixedLayer 'op': candidate 'c1' \(index 1\) returned set"):
        out.sum().backward()
    assert op._arch_alpha.grad is None  # no partial gradient was written


def test_other_candidate_returning_a_number_where_a_tensor_got_a_gradient():
    op = layer('pair', 'tuple-with-int')
    op.resample({'op': 'c0'})
    first, second = op(torch.randn(2, 3))
    with pytest.raises(TypeError, match=r"candidate 'c1' \(index 1\) returned int at element 1, where the sampled "
                                        r"candidate returned a tensor that received a gradient"):
        (first + second).sum().backward()


def test_candidates_returning_different_structures():
    op = layer('tensor', 'pair')
    op.resample({'op': 'c0'})
    with pytest.raises(ValueError, match=r"ProxylessMixedLayer 'op': candidate 'c1' \(index 1\) returned 2 elements, "
                                         r"but the sampled candidate returned 1 element"):
        op(torch.randn(2, 3)).sum().backward()


def test_mixed_input_with_the_wrong_number_of_inputs():
    pick = ProxylessMixedInput(3, 1, nn.Parameter(torch.zeros(3)), nn.Softmax(-1), 'pick')
    pick.resample({})
    with pytest.raises(ValueError, match=r"'pick': expected 3 inputs, got 2"):
        pick([torch.randn(1), torch.randn(1)])


def test_kernel_and_sampler_refuse_bad_shapes():
    from proxyless_rs import alpha_grad, sample_index

    with pytest.raises(ValueError, match='1-d tensor of probabilities'):
        sample_index(torch.ones(2, 2))
    with pytest.raises(ValueError, match='1-d and of equal length'):
        alpha_grad(torch.ones(3) / 3, torch.ones(2))
    with pytest.raises(TypeError, match='expected a torch.Tensor, got'):
        sample_index([0.5, 0.5])
    # libtorch's refusal, as torch raises it: a RuntimeError with its message and no C++ backtrace.
    with pytest.raises(RuntimeError, match=r'^sample_index: probability tensor contains either `inf`, `nan` or '
                                           r'element < 0$'):
        sample_index(torch.tensor([0.5, float('nan')]))


def test_dict_candidates_must_share_their_keys():
    op = layer('dict', 'other-keys')
    op.resample({'op': 'c0'})
    out = op(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"ProxylessMixedLayer 'op': candidate 'c1' \(index 1\) returned keys "
                                         r"\['w', 'y'\], but the sampled candidate returned "
                                         r"keys \['y', 'z'\]"):
        (out['y'] + out['z']).sum().backward()


def test_mode_must_exist_and_two_path_needs_two_candidates():
    with pytest.raises(ValueError, match=r"'op': mode 'three' does not exist; use \"full\".*or \"two\""):
        ProxylessMixedLayer([('a', nn.Identity()), ('b', nn.Identity())], nn.Parameter(torch.zeros(2)),
                            nn.Softmax(-1), 'op', mode='three')
    with pytest.raises(ValueError, match=r"'op': two-path mode needs at least two candidates, it has 1"):
        ProxylessMixedLayer([('a', nn.Identity())], nn.Parameter(torch.zeros(1)), nn.Softmax(-1), 'op', mode='two')
    with pytest.raises(ValueError, match=r"'pick': two-path mode needs at least two candidates"):
        ProxylessMixedInput(1, 1, nn.Parameter(torch.zeros(1)), nn.Softmax(-1), 'pick', mode='two')
