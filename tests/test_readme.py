"""README's training-script example runs as written, on loaders of random batches, and learns: the
recipe users copy first (both blocks made once, entered at every step)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / 'README.md'


def training_script() -> str:
    text = README.read_text()
    section = text[text.index('## In a training script'):]
    match = re.search(r'```python\n(.*?)```', section, re.S)
    assert match is not None, "README's training-script section has no python block"
    return match.group(1)


def test_readme_training_script_runs_and_moves_the_alphas_only_through_the_architecture_step():
    torch.manual_seed(0)
    # A task where the big candidate wins: y is a class of a nonlinear function of x.
    x = torch.randn(256, 64)
    y = (torch.tanh(x[:, :10]) * x[:, 10:20]).argmax(1)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    namespace: dict = {'train_loader': batches * 3, 'val_loader': batches}
    exec(compile(training_script(), str(README), 'exec'), namespace)
    layer, child = namespace['layer'], namespace['child']
    assert namespace['layer'].export({})['block1'] in ('small', 'big')
    alpha = layer._arch_alpha
    assert alpha.grad is not None and not torch.equal(alpha.detach(), torch.zeros(2))
    # Both blocks restored what they switched off.
    assert layer.ctx.enabled and all(p.requires_grad for p in layer.parameters())
    out = child(x[:4])
    assert out.shape == (4, 10)
