"""Property tests of the compiled kernel and sampler against their definitions."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import DEVICES
from proxyless_rs import alpha_grad, sample_index

finite = st.floats(min_value=-50, max_value=50, allow_nan=False)


def alpha_grad_reference(probs: torch.Tensor, binary_grads: torch.Tensor) -> torch.Tensor:
    """NNI 2.10's double loop: grad_i = sum_j b_j p_j (delta_ij - p_i)."""
    n = len(probs)
    grad = torch.zeros_like(probs)
    for i in range(n):
        for j in range(n):
            grad[i] += binary_grads[j] * probs[j] * (int(i == j) - probs[i])
    return grad


@pytest.mark.parametrize('device', DEVICES)
@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(st.lists(finite, min_size=n, max_size=n),
                                                     st.lists(finite, min_size=n, max_size=n))))
def test_closed_form_equals_the_double_loop(device, logits_and_grads):
    logits, b = (torch.tensor(v, dtype=torch.float64) for v in logits_and_grads)
    probs = torch.softmax(logits, -1)
    got = alpha_grad(probs.to(device), b.to(device))
    assert got.dtype == probs.dtype and got.device.type == device
    got = got.cpu()
    torch.testing.assert_close(got, alpha_grad_reference(probs, b), rtol=1e-10, atol=1e-10)
    # Softmax is shift-invariant, so its gradient sums to zero.
    assert abs(got.sum().item()) < 1e-9 * (1 + b.abs().max().item())


@given(st.lists(finite, min_size=2, max_size=8), st.integers(0, 2**31 - 1))
def test_float32_kernel_follows_the_inputs_dtype(logits, seed):
    probs = torch.softmax(torch.tensor(logits), -1)
    b = torch.randn(len(logits), generator=torch.Generator().manual_seed(seed))
    got = alpha_grad(probs, b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, alpha_grad_reference(probs.double(), b.double()).float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('device', DEVICES)
@settings(deadline=None)
@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=10).filter(lambda w: sum(w) > 1e-3),
       st.integers(0, 2**31 - 1))
def test_sampling_draws_what_torch_multinomial_draws(device, weights, seed):
    probs = torch.tensor(weights, device=device)
    torch.manual_seed(seed)
    ours = [sample_index(probs) for _ in range(5)]
    torch.manual_seed(seed)
    theirs = [int(torch.multinomial(probs, 1)[0].item()) for _ in range(5)]
    assert ours == theirs
    assert all(weights[i] > 0 for i in ours)
