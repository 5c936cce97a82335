//! The arithmetic of ProxylessNAS's binary gates.
//!
//! With one-hot gates `g` on the sampled path and `p = softmax(alpha)`, the chain rule gives
//! `dL/dalpha_i = sum_j b_j p_j (delta_ij - p_i)` where `b_j = <out_j, dL/dout>` is the
//! gradient of gate `j`. NNI 2.10 evaluates that double sum with n^2 scalar ops; it is
//! `p_i (b_i - <b, p>)`, a handful of vector ops that stay on the tensors' device.

use pyo3::prelude::*;
use pyo3_tch::{wrap_tch_err, PyTensor};
use tch::{Kind, TchError, Tensor};

/// `b = sum over tensor pairs of sum(out * grad)`: the gradient of one binary gate.
///
/// `None` gradients (outputs that received no gradient) contribute nothing, as in NNI.
/// The result is a 0-d tensor in the product's dtype, or `None` if no pair contributed.
pub fn binary_gate_grad(outputs: &[Tensor], grads: &[Option<Tensor>]) -> Result<Option<Tensor>, TchError> {
    if outputs.len() != grads.len() {
        return Err(TchError::Shape(format!(
            "a candidate returned {} tensors, but the layer's output had {}; all candidates must \
             return the same structure",
            outputs.len(),
            grads.len()
        )));
    }
    let mut total: Option<Tensor> = None;
    for (out, grad) in outputs.iter().zip(grads) {
        let Some(grad) = grad else { continue };
        // Same op as NNI (`torch.sum(t1 * t2)`), so gate gradients match it bit for bit.
        let term = out.f_mul(grad)?.f_sum(None::<Kind>)?;
        total = Some(match total {
            None => term,
            Some(acc) => acc.f_add(&term)?,
        });
    }
    Ok(total)
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

/// Adds `alpha_grad(probs, binary_grads)` into `grad` in place.
pub fn accumulate_alpha_grad(grad: &mut Tensor, probs: &Tensor, binary_grads: &Tensor) -> Result<(), TchError> {
    let delta = alpha_grad(probs, binary_grads)?;
    grad.f_add_(&delta).map(drop)
}

/// `alpha_grad(probs, binary_grads)`: the closed form above, for tests and custom loops.
#[pyfunction]
#[pyo3(name = "alpha_grad")]
pub fn py_alpha_grad(probs: PyTensor, binary_grads: PyTensor) -> PyResult<PyTensor> {
    let _no_grad = tch::no_grad_guard();
    alpha_grad(&probs, &binary_grads).map(PyTensor).map_err(wrap_tch_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// NNI 2.10's double loop, as the reference.
    fn alpha_grad_quadratic(p: &[f64], b: &[f64]) -> Vec<f64> {
        let n = p.len();
        (0..n)
            .map(|i| (0..n).map(|j| b[j] * p[j] * (f64::from(u8::from(i == j)) - p[i])).sum())
            .collect()
    }

    fn to_vec(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
    }

    #[test]
    fn closed_form_equals_double_sum() {
        tch::manual_seed(0);
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
    fn gradient_sums_to_zero_and_accumulates() {
        // softmax is invariant to a constant shift of alpha, so its gradient sums to zero.
        let probs = Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.4]);
        let b = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]);
        let mut grad = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 1.0]);
        accumulate_alpha_grad(&mut grad, &probs, &b).unwrap();
        let g = to_vec(&grad);
        assert!((g.iter().sum::<f64>() - 4.0).abs() < 1e-6, "{g:?}");
        let want = alpha_grad_quadratic(&to_vec(&probs), &to_vec(&b));
        for (g, w) in g.iter().zip(&want) {
            assert!((g - 1.0 - w).abs() < 1e-6);
        }
    }

    #[test]
    fn gate_gradient_skips_missing_grads_and_checks_arity() {
        let out = [Tensor::from_slice(&[1.0f32, 2.0]), Tensor::from_slice(&[3.0f32])];
        let grads = [Some(Tensor::from_slice(&[0.5f32, 0.25])), None];
        let b = binary_gate_grad(&out, &grads).unwrap().unwrap();
        assert_eq!(to_vec(&b), vec![1.0]);
        assert!(binary_gate_grad(&out, &[None, None]).unwrap().is_none());
        assert!(binary_gate_grad(&out[..1], &grads).is_err());
    }

    #[test]
    fn mismatched_lengths_are_refused() {
        let probs = Tensor::from_slice(&[0.5f32, 0.5]);
        let b = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        assert!(alpha_grad(&probs, &b).is_err());
    }
}
