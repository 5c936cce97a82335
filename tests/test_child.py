"""``freeze``: the child network of a search, a plain module with the supernet's weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import proxyless_rs
from conftest import TORCH_RELEASE, build, resample_in_order
from proxyless_rs import ProxylessMixedInput, ProxylessMixedLayer, freeze
from proxyless_rs.child import ChosenInput, ChosenInputs
from proxyless_rs.nni.version import NNI3


def trained(net: nn.Module, steps: int = 5) -> nn.Module:
    """A few architecture and weight steps, so that the alphas and weights are not the initial ones."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(16, 8)
    for seed in range(steps):
        torch.manual_seed(seed)
        net.resample()
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    return net


def proxyless_modules(module: nn.Module) -> list[str]:
    return [type(m).__name__ for m in module.modules()
            if type(m).__module__.startswith('proxyless_rs') and not isinstance(m, (ChosenInput, ChosenInputs))]


@pytest.mark.parametrize('use_export', [True, False])
def test_child_gives_the_supernets_outputs_with_the_architecture_fixed(use_export):
    # The regression supernet: a layer called twice, two layers sharing a label, kwargs, tuple
    # outputs, a mixed input.
    net = trained(build('rs'))
    arch = None
    if not use_export:
        arch = {'first': 'tanh', 'shared': 'linear', 'pair': 'minus', 'pick': 2}
    child = freeze(net, arch)
    fixed = arch or {label: choice for m in net.mixed() for label, choice in m.export({}).items()}
    net.eval()
    child.eval()
    resample_in_order(net.mixed(), dict(fixed))
    x = torch.randn(7, 8)
    with torch.no_grad():
        assert torch.equal(child(x), net(x))
    assert proxyless_modules(child) == []
    assert not [name for name, _ in child.named_parameters() if 'arch_alpha' in name]
    # The weights are copies: training the child leaves the supernet alone.
    with torch.no_grad():
        next(child.parameters()).add_(1.0)
        assert not torch.equal(child(x), net(x))


def test_default_architecture_is_the_export():
    net = trained(build('rs'))
    exported = {}
    for m in net.mixed():
        exported.update(m.export(exported))
    child = freeze(net)
    # NNI 3.0 exports one chosen input as a one-element list.
    assert isinstance(child.pick, ChosenInput) and exported['pick'] in (child.pick.index, [child.pick.index])
    assert type(child.first) is type(net.first._modules[str(exported['first'])])


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.choice = ProxylessMixedLayer(
            [('linear', nn.Linear(8, 8)), ('mlp', nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)))],
            nn.Parameter(torch.tensor([0.0, 1.0])), nn.Softmax(-1), 'choice')
        self.pick = ProxylessMixedInput(2, 1, nn.Parameter(torch.tensor([0.0, 1.0])), nn.Softmax(-1), 'pick')
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head(self.pick([h, self.choice(h)]))


def test_child_scripts_and_traces():
    torch.manual_seed(0)
    child = freeze(Small()).eval()
    x = torch.randn(4, 8)
    expected = child(x)
    scripted = torch.jit.script(child)
    traced = torch.jit.trace(child, (x,))
    torch.testing.assert_close(scripted(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(traced(x), expected, rtol=0, atol=0)


def test_child_exports_to_onnx_and_runs_there():
    # The TorchScript-based exporter (dynamo=False: the dynamo one needs onnxscript and is
    # torch's default from 2.9); the file is checked by onnx and run by onnxruntime.
    import io

    import onnx
    import onnxruntime

    torch.manual_seed(0)
    child = freeze(Small()).eval()
    x = torch.randn(4, 8)
    buffer = io.BytesIO()
    kwargs = {'dynamo': False} if TORCH_RELEASE >= (2, 5) else {}
    torch.onnx.export(child, (x,), buffer, input_names=['x'], output_names=['y'],
                      dynamic_axes={'x': {0: 'batch'}, 'y': {0: 'batch'}}, **kwargs)
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert 'Gemm' in ops or 'MatMul' in ops
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=['CPUExecutionProvider'])
    batch = torch.randn(9, 8)
    (got,) = session.run(None, {'x': batch.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), child(batch).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(TORCH_RELEASE < (2, 1), reason='torch.compile needs torch 2.1 or later on Python 3.11')
def test_child_compiles_in_one_graph():
    torch.manual_seed(0)
    child = freeze(Small()).eval()
    x = torch.randn(4, 8)
    compiled = torch.compile(child, fullgraph=True, backend='eager')
    torch.testing.assert_close(compiled(x), child(x), rtol=0, atol=0)


@pytest.mark.skipif(NNI3, reason="NNI 2.10's ProxylessMixedRepeat constructor; tests/test_nni3.py builds NNI 3.0's")
@pytest.mark.parametrize('depth', [1, 2, 3])
def test_depth_choice_becomes_its_first_blocks(depth):
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3)]
    chain = [blocks[0]] + [ProxylessMixedLayer([('0', nn.Identity()), ('1', block)], nn.Parameter(torch.zeros(2)),
                                               nn.Softmax(-1), f'depth/in_repeat_{i}')
                           for i, block in enumerate(blocks[1:], start=1)]
    repeat = proxyless_rs.ProxylessMixedRepeat(chain, 'depth', [1, 2, 3], 1, 3)
    child = freeze(repeat, {'depth': depth})
    assert isinstance(child, nn.Sequential) and len(child) == depth and proxyless_modules(child) == []
    memo = {'depth/in_repeat_1': '1' if depth > 1 else '0', 'depth/in_repeat_2': '1' if depth > 2 else '0'}
    for layer in chain[1:]:
        layer.resample(memo)
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.equal(child(x), repeat(x))


def test_an_architecture_that_misses_or_misnames_a_choice_is_refused_naming_the_layer():
    net = Small()
    with pytest.raises(KeyError, match="ProxylessMixedLayer 'choice': the architecture has no choice for 'choice'"):
        freeze(net, {'pick': 0})
    with pytest.raises(ValueError, match="ProxylessMixedLayer 'choice': the architecture chose 'conv'"):
        freeze(net, {'choice': 'conv', 'pick': 0})


def test_several_chosen_inputs_need_a_reduction():
    net = Small()
    with pytest.raises(ValueError, match="ProxylessMixedInput 'pick': the architecture chose the inputs"):
        freeze(net, {'choice': 'linear', 'pick': [0, 1]})
    child = freeze(net, {'choice': 'linear', 'pick': [0, 1]}, reduction='mean')
    x = torch.randn(3, 8)
    h = torch.relu(net.stem(x))
    torch.testing.assert_close(child(x), net.head((h + net.choice._modules['linear'](h)) / 2))
    torch.jit.script(child)


def test_the_retraining_example_runs_the_pipeline_to_deployed_files(tmp_path):
    # examples/digits_retrain.py end to end, shortened: search, export under a latency limit,
    # freeze, fine-tune and retrain, deploy as TorchScript (and ONNX) files and load them back.
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / 'examples' / 'digits_retrain.py'
    result = subprocess.run([sys.executable, str(example), '--epochs', '2', '--retrain-epochs', '1',
                             '--deploy', str(tmp_path / 'child')], capture_output=True, text=True, timeout=600,
                            cwd=example.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert (tmp_path / 'child.pt').exists() and (tmp_path / 'child.onnx').exists()
    (scripted,) = [line for line in lines if line.startswith('TorchScript ')]
    assert scripted.split()[-1] == '0.0e+00'  # the loaded file gives the child's outputs exactly
    (onnx_line,) = [line for line in lines if line.startswith('ONNX ')]
    assert float(onnx_line.split()[-1]) < 1e-4
    (prediction,) = [line for line in lines if line.startswith('table prediction')]
    assert float(prediction.split()[2]) <= 0.02  # the export is within the limit


@pytest.mark.parametrize('index', [-1, True, 3, 'a', [], [0, 7]])
def test_freeze_and_predicted_costs_refuse_an_input_index_naming_the_layer(index):
    # -1 would silently take the last input, True input 1; out of range or a string failed later, at
    # forward, without naming the layer. resample refuses them by name; so does anything else that
    # takes an architecture.
    pick = proxyless_rs.ProxylessMixedInput(3, 1, nn.Parameter(torch.zeros(3)), nn.Softmax(-1), 'pick')
    with pytest.raises(ValueError, match=r"ProxylessMixedInput 'pick': the architecture chose .*, but the choices are "
                                         r"the input indices \[0, 1, 2\]"):
        proxyless_rs.freeze(nn.Sequential(pick), {'pick': index})
    table = proxyless_rs.CostTable({'latency': {'pick': {'0': 1.0, '1': 2.0, '2': 3.0}}})
    with pytest.raises(ValueError, match=r"ProxylessMixedInput 'pick'"):
        proxyless_rs.predicted_costs({'pick': index}, nn.Sequential(pick), table)
