//! The arithmetic of ProxylessNAS's binary gates.
//!
//! With one-hot gates `g` on the sampled path and `p = softmax(alpha)`, the chain rule gives
//! `dL/dalpha_i = sum_j b_j p_j (delta_ij - p_i)` where `b_j = <out_j, dL/dout>` is the
//! gradient of gate `j`. NNI 2.10 evaluates that double sum with n^2 scalar ops; it is
//! `p_i (b_i - <b, p>)`, a handful of vector ops that stay on the tensors' device.

use pyo3::prelude::*;
use tch::kind::Element;
use tch::{Kind, TchError, Tensor};

use crate::errors::in_context;
use crate::interop::tree::PyTensor;

/// `b = sum over tensor pairs of sum(out * grad)`: the gradient of one binary gate.
///
/// `None` gradients (outputs that received no gradient) contribute nothing, as in NNI.
/// The result is a 0-d tensor in the product's dtype, or `None` if no pair contributed.
pub fn binary_gate_grad(outputs: &[Option<Tensor>], grads: &[Option<Tensor>]) -> Result<Option<Tensor>, TchError> {
    if outputs.len() != grads.len() {
        return Err(TchError::Shape(format!(
            "a candidate returned {} elements, but the layer's output had {}; all candidates must \
             return the same structure",
            outputs.len(),
            grads.len()
        )));
    }
    let mut total: Option<Tensor> = None;
    for (out, grad) in outputs.iter().zip(grads) {
        // A missing gradient or a None element contributes nothing, as in NNI.
        let (Some(out), Some(grad)) = (out, grad) else { continue };
        // Same op as NNI (`torch.sum(t1 * t2)`), so gate gradients match it bit for bit.
        let term = out.f_mul(grad)?.f_sum(None::<Kind>)?;
        total = Some(match total {
            None => term,
            Some(acc) => acc.f_add(&term)?,
        });
    }
    Ok(total)
}

/// Candidate outputs of at most this many elements are reduced together at the end of the
/// backward (ATen's reduction grain size: below it ATen would not split the work across threads
/// either). Larger outputs are reduced one by one, as soon as each is computed, so that no more
/// than one candidate output is alive at a time (NNI's peak memory).
pub const BATCH_NUMEL_LIMIT: usize = 32768;

/// Whether [`binary_gate_grads`] may batch: one output gradient, small enough.
pub fn batchable(grads: &[Option<Tensor>]) -> bool {
    matches!(grads, [Some(grad)] if grad.numel() <= BATCH_NUMEL_LIMIT)
}

/// `sum(a * b)` accumulated in f64, in eight independent lanes so that the compiler vectorizes it.
fn dot_f64<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0.0f64; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(&x, &y)| x.into() * y.into()).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += x[lane].into() * y[lane].into();
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// A contiguous host tensor's elements, if it holds `T`. Refused (None) where the memory does not
/// hold the tensor's values as they read: another device or dtype, a strided or sparse layout, or
/// a lazily negated or conjugated view (`-x` of a view, `x.conj()`: the bit is applied on read).
pub(crate) fn host_slice<T: Element>(t: &Tensor) -> Option<&[T]> {
    if t.device() != tch::Device::Cpu
        || t.kind() != T::KIND
        || t.is_sparse()
        || t.is_mkldnn()
        || !t.is_contiguous()
        || t.is_neg()
        || t.is_conj()
    {
        return None;
    }
    let numel = t.numel(); // the product of `size()`, which tch reads into a new Vec: once
    if numel == 0 {
        return Some(&[]); // data_ptr may be null
    }
    // SAFETY: a contiguous CPU tensor of `numel` elements of `kind` (= T) starts at data_ptr, and
    // the borrow of `t` keeps its storage alive.
    Some(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, numel) })
}

/// A new 1-d host tensor holding `values`. tch's `Tensor::from_slice` makes it with
/// `torch::zeros` before copying the values in, a fill dispatched through libtorch for nothing;
/// this makes it empty. Each architecture step makes two such tensors a layer (the gates and
/// alpha's gradient).
pub(crate) fn host_tensor<T: Element>(values: &[T]) -> Result<Tensor, TchError> {
    let tensor = Tensor::f_empty([values.len() as i64], (T::KIND, tch::Device::Cpu))?;
    if !values.is_empty() {
        // SAFETY: a new contiguous host tensor of `values.len()` elements of `T` (its data pointer
        // non-null, as it has elements), which nothing else refers to yet.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), tensor.data_ptr() as *mut T, values.len()) };
    }
    Ok(tensor)
}

/// [`binary_gate_grads`] on the host: for small contiguous float tensors in host memory, n dot
/// products in a loop cost less than the three dispatches (stack, mul, sum) of the tensor form.
/// Products and sums are taken in f64 (a float32 product is exact in f64), so each gate is
/// NNI's float32 `sum(out * grad)` up to its rounding, then rounded to the outputs' dtype.
fn host_gate_grads(outputs: &[&Tensor], grad: &Tensor) -> Option<Tensor> {
    fn dots<T: Element + Copy + Into<f64>>(outputs: &[&Tensor], grad: &Tensor) -> Option<Vec<f64>> {
        let grad = host_slice::<T>(grad)?;
        outputs.iter().map(|out| host_slice::<T>(out).map(|out| dot_f64(out, grad))).collect()
    }
    if grad.device() != tch::Device::Cpu || !matches!(grad.kind(), Kind::Float | Kind::Double) {
        return None;
    }
    // Gradients are often expanded (the backward of `sum()` or `mean()` broadcasts a scalar):
    // one copy of the gradient is cheaper than the tensor form.
    let grad = if grad.is_contiguous() && !grad.is_neg() {
        grad.shallow_clone()
    } else {
        grad.f_contiguous().ok()?.f_resolve_neg().ok()?
    };
    match grad.kind() {
        Kind::Float => {
            let gates = dots::<f32>(outputs, &grad)?;
            host_tensor(&gates.iter().map(|&v| v as f32).collect::<Vec<_>>()).ok()
        }
        _ => host_tensor(&dots::<f64>(outputs, &grad)?).ok(),
    }
}

/// The binary-gate gradients of all candidates, `b_k = sum(out_k * grad)`, as a 1-d tensor.
pub fn binary_gate_grads(outputs: &[Vec<Option<Tensor>>], grads: &[Option<Tensor>]) -> Result<Tensor, TchError> {
    if let [Some(grad)] = grads {
        let (size, kind) = (grad.size(), grad.kind());
        let same = |out: &Vec<Option<Tensor>>| matches!(out.as_slice(), [Some(out)] if out.size() == size && out.kind() == kind);
        if batchable(grads) && outputs.iter().all(same) {
            let outputs: Vec<&Tensor> = outputs.iter().map(|out| out[0].as_ref().expect("checked by same")).collect();
            if let Some(gates) = host_gate_grads(&outputs, grad) {
                return Ok(gates);
            }
            // On an accelerator, in another dtype or for non-contiguous outputs: one batched
            // reduction where the tensors are, no host round trip. On the CPU a row of
            // `sum(stack(outs) * grad, dims)` below the grain size is summed exactly like
            // `sum(out * grad)`, NNI's op, for contiguous outputs (a test checks it); a
            // non-contiguous output (NNI's product follows its memory layout) or a CUDA
            // reduction may order the sum differently, so gates may round differently.
            let products = Tensor::f_stack(&outputs, 0)?.f_mul(grad)?;
            let dims: Vec<i64> = (1..products.dim() as i64).collect();
            return if dims.is_empty() { Ok(products) } else { products.f_sum_dim_intlist(dims, false, None::<Kind>) };
        }
    }
    let gates = outputs.iter().map(|out| binary_gate_grad(out, grads)).collect::<Result<Vec<_>, _>>()?;
    stack_gate_grads(gates, grads)
}

/// Stacks per-candidate gate gradients; a candidate no gradient reached counts as 0.
pub fn stack_gate_grads(gates: Vec<Option<Tensor>>, grads: &[Option<Tensor>]) -> Result<Tensor, TchError> {
    let like = gates.iter().flatten().next().or_else(|| grads.iter().flatten().next());
    let options = like.map_or((Kind::Float, tch::Device::Cpu), |t| (t.kind(), t.device()));
    let gates = gates
        .into_iter()
        .map(|gate| gate.map_or_else(|| Tensor::f_zeros([], options), Ok))
        .collect::<Result<Vec<_>, _>>()?;
    Tensor::f_stack(&gates, 0)
}

/// `dL/dalpha = p * (b - <b, p>)`, in `probs`' dtype and on its device.
pub fn alpha_grad(probs: &Tensor, binary_grads: &Tensor) -> Result<Tensor, TchError> {
    if probs.dim() != 1 || binary_grads.size() != probs.size() {
        return Err(TchError::Shape(format!(
            "probabilities and binary-gate gradients must be 1-d and of equal length, got {:?} and {:?}",
            probs.size(),
            binary_grads.size()
        )));
    }
    let b = binary_grads.f_to_kind(probs.kind())?;
    let expected = b.f_dot(probs)?;
    probs.f_mul(&b.f_sub(&expected)?)
}

/// The values of a contiguous 1-d float tensor in host memory, or `None` for anything else
/// (a CUDA tensor, another dtype): reading those would need a copy or a device sync.
fn host_values(t: &Tensor) -> Option<Vec<f64>> {
    if t.dim() != 1 {
        return None;
    }
    match t.kind() {
        Kind::Float => host_slice::<f32>(t).map(|v| v.iter().map(|&v| f64::from(v)).collect()),
        Kind::Double => host_slice::<f64>(t).map(<[f64]>::to_vec),
        _ => None,
    }
}

/// `alpha_grad(probs, binary_grads)` in `like`'s dtype and on its device (`like`: alpha).
///
/// On the host the n-element closed form is a scalar loop (in f64) and one tensor from the
/// values: for the handful of candidates of a mixed layer that is cheaper than five tensor
/// dispatches. On any other device it stays in tensor ops on that device, with no synchronisation.
pub fn alpha_grad_like(like: &Tensor, probs: &Tensor, binary_grads: &Tensor) -> Result<Tensor, TchError> {
    if let (Some(p), Some(b), tch::Device::Cpu) = (host_values(probs), host_values(binary_grads), like.device()) {
        if p.len() == b.len() && like.size() == [p.len() as i64] {
            let expected: f64 = p.iter().zip(&b).map(|(p, b)| p * b).sum();
            let delta: Vec<f64> = p.iter().zip(&b).map(|(p, b)| p * (b - expected)).collect();
            return match like.kind() {
                Kind::Float => host_tensor(&delta.iter().map(|&v| v as f32).collect::<Vec<_>>()),
                Kind::Double => host_tensor(&delta),
                kind => host_tensor(&delta)?.f_to_kind(kind),
            };
        }
    }
    let delta = alpha_grad(probs, binary_grads)?;
    if delta.kind() == like.kind() {
        Ok(delta)
    } else {
        delta.f_to_kind(like.kind())
    }
}

/// `t[indices]` of a 1-d tensor, gathered with narrow: no index tensor to copy to `t`'s device.
pub fn gather(t: &Tensor, indices: &[i64]) -> Result<Tensor, TchError> {
    let parts = indices.iter().map(|&i| t.f_narrow(0, i, 1)).collect::<Result<Vec<_>, _>>()?;
    Tensor::f_cat(&parts, 0)
}

/// Two-path mode: `alpha_grad(probs, binary_grads)` of the involved candidates (`probs` is the
/// softmax of their logits alone) at `indices` of a tensor like alpha (`like`), zero elsewhere.
pub fn subset_alpha_grad_like(
    like: &Tensor,
    indices: &[i64],
    probs: &Tensor,
    binary_grads: &Tensor,
) -> Result<Tensor, TchError> {
    let delta = alpha_grad(probs, binary_grads)?;
    let full = like.f_zeros_like()?;
    for (k, &i) in indices.iter().enumerate() {
        full.f_narrow(0, i, 1)?.f_copy_(&delta.f_narrow(0, k as i64, 1)?)?;
    }
    Ok(full)
}

/// Two-path mode, after the optimizer step: `alpha[indices]` (the involved logits) are shifted by
/// one common offset so that `sum(exp(alpha[indices]))` equals its value in `before` (alpha as it
/// was when the paths were drawn), and every other logit is put back to its value in `before`
/// (an optimizer with momentum or weight decay moves them although their gradient was zero). So
/// the step only trades probability between the involved candidates: every other candidate's
/// probability is unchanged.
pub fn rescale_subset(alpha: &Tensor, indices: &[i64], before: &Tensor) -> Result<(), TchError> {
    let before = before.f_to_kind(alpha.kind())?;
    let stepped = gather(alpha, indices)?;
    let offset = stepped.f_logsumexp([0], false)?.f_sub(&gather(&before, indices)?.f_logsumexp([0], false)?)?;
    let rescaled = stepped.f_sub(&offset)?;
    let mut alpha = alpha.shallow_clone();
    alpha.f_copy_(&before)?;
    for (k, &i) in indices.iter().enumerate() {
        alpha.f_narrow(0, i, 1)?.f_copy_(&rescaled.f_narrow(0, k as i64, 1)?)?;
    }
    Ok(())
}

/// `alpha_grad(probs, binary_grads)`: the closed form above, for tests and custom loops.
#[pyfunction]
#[pyo3(name = "alpha_grad")]
pub fn py_alpha_grad(probs: PyTensor, binary_grads: PyTensor) -> PyResult<PyTensor> {
    let _no_grad = tch::no_grad_guard();
    alpha_grad(&probs, &binary_grads).map(PyTensor).map_err(in_context("alpha_grad"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// NNI 2.10's double loop, as the reference.
    fn alpha_grad_quadratic(p: &[f64], b: &[f64]) -> Vec<f64> {
        let n = p.len();
        (0..n).map(|i| (0..n).map(|j| b[j] * p[j] * (f64::from(u8::from(i == j)) - p[i])).sum()).collect()
    }

    fn to_vec(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
    }

    #[test]
    fn closed_form_equals_double_sum() {
        let _generator = crate::testing::seeded(0);
        for n in 1..=9 {
            let probs = Tensor::randn([n], (Kind::Double, Device::Cpu)).softmax(0, None::<Kind>);
            let b = Tensor::randn([n], (Kind::Double, Device::Cpu)) * 10.0;
            let got = to_vec(&alpha_grad(&probs, &b).unwrap());
            let want = alpha_grad_quadratic(&to_vec(&probs), &to_vec(&b));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "n={n}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn gradient_sums_to_zero() {
        // softmax is invariant to a constant shift of alpha, so its gradient sums to zero.
        let probs = Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.4]);
        let b = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]);
        let g = to_vec(&alpha_grad_like(&probs, &probs, &b).unwrap());
        assert!(g.iter().sum::<f64>().abs() < 1e-6, "{g:?}");
        let want = alpha_grad_quadratic(&to_vec(&probs), &to_vec(&b));
        for (g, w) in g.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6);
        }
    }

    #[test]
    fn subset_gradient_is_zero_outside_the_subset() {
        let like = Tensor::zeros([5], (Kind::Float, Device::Cpu));
        let probs = Tensor::from_slice(&[0.25f32, 0.75]);
        let b = Tensor::from_slice(&[2.0f32, -1.0]);
        let g = to_vec(&subset_alpha_grad_like(&like, &[3, 1], &probs, &b).unwrap());
        let want = to_vec(&alpha_grad(&probs, &b).unwrap());
        assert_eq!(g, vec![0.0, want[1], 0.0, want[0], 0.0]);
    }

    #[test]
    fn gate_gradient_skips_missing_grads_and_checks_arity() {
        let out = [Some(Tensor::from_slice(&[1.0f32, 2.0])), Some(Tensor::from_slice(&[3.0f32])), None];
        let grads = [Some(Tensor::from_slice(&[0.5f32, 0.25])), None, Some(Tensor::from_slice(&[4.0f32]))];
        // Element 1 got no gradient, element 2 is a pass-through value (None): both contribute nothing.
        let b = binary_gate_grad(&out, &grads).unwrap().unwrap();
        assert_eq!(to_vec(&b), vec![1.0]);
        assert!(binary_gate_grad(&out, &[None, None, None]).unwrap().is_none());
        assert!(binary_gate_grad(&out[..1], &grads).is_err());
    }

    #[test]
    fn a_host_tensor_holds_its_values() {
        let empty = host_tensor::<f32>(&[]).unwrap();
        assert_eq!(empty.size(), vec![0]);
        let floats = host_tensor(&[1.5f32, -2.0, 3.25]).unwrap();
        assert_eq!((floats.kind(), floats.size()), (Kind::Float, vec![3]));
        assert!(floats.equal(&Tensor::from_slice(&[1.5f32, -2.0, 3.25])));
        let doubles = host_tensor(&[0.1f64, f64::NAN]).unwrap();
        assert_eq!(doubles.kind(), Kind::Double);
        assert_eq!(doubles.double_value(&[0]), 0.1);
        assert!(doubles.double_value(&[1]).is_nan());
    }

    #[test]
    fn host_loop_equals_tensor_ops() {
        let _generator = crate::testing::seeded(1);
        for kind in [Kind::Float, Kind::Double] {
            let probs = Tensor::randn([7], (kind, Device::Cpu)).softmax(0, None::<Kind>);
            let b = Tensor::randn([7], (kind, Device::Cpu));
            let grad = alpha_grad_like(&Tensor::zeros([7], (kind, Device::Cpu)), &probs, &b).unwrap();
            assert_eq!(grad.kind(), kind);
            let want = alpha_grad(&probs, &b).unwrap();
            for (g, w) in to_vec(&grad).iter().zip(to_vec(&want)) {
                assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "{kind:?}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn host_gates_equal_the_sum_in_f64() {
        let _generator = crate::testing::seeded(2);
        for kind in [Kind::Float, Kind::Double] {
            for shape in [vec![], vec![0, 3], vec![5], vec![8, 64], vec![3, 4, 5], vec![64, 512]] {
                let grad = Tensor::randn(shape.as_slice(), (kind, Device::Cpu));
                let outputs: Vec<Vec<Option<Tensor>>> =
                    (0..6).map(|_| vec![Some(Tensor::randn(shape.as_slice(), (kind, Device::Cpu)))]).collect();
                // Also through an expanded (non-contiguous) gradient, as the backward of sum() gives.
                let expanded = grad.sum(None::<Kind>).expand(shape.as_slice(), false);
                for grad in [grad, expanded] {
                    let gates = binary_gate_grads(&outputs, &[Some(grad.shallow_clone())]).unwrap();
                    assert_eq!(gates.kind(), kind);
                    for (out, gate) in outputs.iter().zip(to_vec(&gates)) {
                        let products = out[0].as_ref().unwrap().to_kind(Kind::Double) * grad.to_kind(Kind::Double);
                        let want = to_vec(&products.sum(None::<Kind>))[0];
                        let scale = to_vec(&products.abs().sum(None::<Kind>))[0];
                        let eps = if kind == Kind::Float { 1e-7 } else { 1e-15 };
                        assert!((gate - want).abs() <= eps * (1.0 + scale), "{kind:?} {shape:?}: {gate} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn tensor_form_gates_equal_one_by_one() {
        // bfloat16 outputs take the tensor form (as accelerator tensors do): NNI's op, bit for bit.
        let _generator = crate::testing::seeded(3);
        let kind = Kind::BFloat16;
        for shape in [vec![], vec![5], vec![8, 64], vec![3, 4, 5], vec![64, 512]] {
            let grad = Tensor::randn(shape.as_slice(), (kind, Device::Cpu));
            let outputs: Vec<Vec<Option<Tensor>>> =
                (0..6).map(|_| vec![Some(Tensor::randn(shape.as_slice(), (kind, Device::Cpu)))]).collect();
            let grads = [Some(grad)];
            let batched = binary_gate_grads(&outputs, &grads).unwrap();
            assert_eq!(batched.kind(), kind);
            let single: Vec<f64> =
                outputs.iter().map(|out| to_vec(&binary_gate_grad(out, &grads).unwrap().unwrap())[0]).collect();
            assert_eq!(to_vec(&batched), single, "shape {shape:?}");
        }
    }

    #[test]
    fn negated_views_are_read_with_their_sign() {
        let _generator = crate::testing::seeded(4);
        let grad = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
        let plain = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
        let negated = plain.f_internal_neg_view().unwrap();
        assert!(negated.is_neg() && host_slice::<f32>(&negated).is_none());
        let outputs = vec![vec![Some(plain.shallow_clone())], vec![Some(negated)]];
        let gates = to_vec(&binary_gate_grads(&outputs, &[Some(grad.shallow_clone())]).unwrap());
        assert!((gates[0] + gates[1]).abs() < 1e-5, "{gates:?}");
        // A negated gradient too.
        let negated_grad = grad.f_internal_neg_view().unwrap();
        let flipped = to_vec(&binary_gate_grads(&outputs[..1], &[Some(negated_grad)]).unwrap());
        assert!((flipped[0] + gates[0]).abs() < 1e-5, "{flipped:?} vs {gates:?}");
    }

    #[test]
    fn mismatched_lengths_are_refused() {
        let probs = Tensor::from_slice(&[0.5f32, 0.5]);
        let b = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        assert!(alpha_grad(&probs, &b).is_err());
    }
}
