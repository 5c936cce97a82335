//! Multinomial resampling of a mixed layer's path.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tch::{TchError, Tensor};

use crate::errors::in_context;
use crate::interop::tree::PyTensor;

/// Draws one index from the categorical distribution `probs` (1-d, non-negative).
///
/// Uses libtorch's `multinomial` on `probs`' device with the default generator, so that
/// under the same `torch.manual_seed` it draws exactly what `torch.multinomial(probs, 1)`
/// draws in NNI. Reading the index back is the one host synchronisation per step that a
/// sampled architecture needs.
#[pyfunction]
pub fn sample_index(probs: PyTensor) -> PyResult<i64> {
    if probs.dim() != 1 || probs.size()[0] == 0 {
        return Err(PyValueError::new_err(format!(
            "sample_index expects a non-empty 1-d tensor of probabilities, got shape {:?}",
            probs.size()
        )));
    }
    draw(&probs).map_err(in_context("sample_index"))
}

/// See [`sample_index`]; libtorch refuses probabilities that are negative, NaN or infinite.
pub fn draw(probs: &Tensor) -> Result<i64, TchError> {
    probs.f_multinomial(1, false)?.f_int64_value(&[0])
}

/// Two distinct indices from `probs` (`torch.multinomial(probs, 2, replacement=False)`).
pub fn draw_pair(probs: &Tensor) -> Result<(i64, i64), TchError> {
    let drawn = probs.f_multinomial(2, false)?;
    Ok((drawn.f_int64_value(&[0])?, drawn.f_int64_value(&[1])?))
}

/// `n` distinct indices (1 or 2) from `probs`, a softmax's output, exactly as
/// `torch.multinomial(probs, n, replacement=False)` draws them; `None` when `probs` holds a NaN
/// (the logits held NaN or infinities).
///
/// Why not `multinomial` itself: for one sample, or any number without replacement, libtorch
/// draws `q ~ Exp(1)` (`empty_like(probs).exponential_(1)` on the default generator) and takes
/// the argmax (top-k) of `probs / q`, after checking the probabilities with nine more ops and
/// three host reads (max, min, sum), about half of a draw's cost in an overhead-bound search.
/// The same ops on the same generator draw the same indices (the regression tests compare every
/// draw with NNI's `torch.multinomial` under the same seeds, at both ends of the torch span). A
/// softmax's output needs one check only: it is never negative and sums to 1 unless it holds a
/// NaN, and a NaN is always the largest `probs / q`, so reading the drawn quotient says it.
pub fn draw_from_softmax(probs: &Tensor, n: i64) -> Result<Option<Vec<i64>>, TchError> {
    let quotient = probs.f_div(&probs.f_empty_like()?.f_exponential_(1.0)?)?;
    let drawn = if n == 1 { quotient.f_argmax(-1, false)?.f_view([1])? } else { quotient.f_topk(n, -1, true, true)?.1 };
    let drawn = drawn.f_to_device(tch::Device::Cpu)?;
    let drawn = (0..n).map(|i| drawn.f_int64_value(&[i])).collect::<Result<Vec<_>, _>>()?;
    let largest = quotient.f_double_value(&[drawn[0]])?;
    Ok(if largest.is_nan() { None } else { Some(drawn) })
}
