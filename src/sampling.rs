//! Multinomial resampling of a mixed layer's path.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_tch::{wrap_tch_err, PyTensor};
use tch::Tensor;

/// Draws one index from the categorical distribution `probs` (1-d, non-negative).
///
/// Uses libtorch's `multinomial` on `probs`' device with the default generator, so that
/// under the same `torch.manual_seed` it draws exactly what `torch.multinomial(probs, 1)`
/// draws in NNI. Reading the index back is the one host synchronisation per step that a
/// sampled architecture needs.
#[pyfunction]
pub fn sample_index(probs: PyTensor) -> PyResult<i64> {
    draw(&probs)
}

/// See [`sample_index`].
pub fn draw(probs: &Tensor) -> PyResult<i64> {
    if probs.dim() != 1 || probs.size()[0] == 0 {
        return Err(PyValueError::new_err(format!(
            "sample_index expects a non-empty 1-d tensor of probabilities, got shape {:?}",
            probs.size()
        )));
    }
    let drawn = probs.f_multinomial(1, false).map_err(wrap_tch_err)?;
    drawn.f_int64_value(&[0]).map_err(wrap_tch_err)
}

/// Two distinct indices from `probs` (`torch.multinomial(probs, 2, replacement=False)`).
pub fn draw_pair(probs: &Tensor) -> PyResult<(i64, i64)> {
    if probs.dim() != 1 || probs.size()[0] < 2 {
        return Err(PyValueError::new_err(format!(
            "two-path sampling needs a 1-d tensor of at least 2 probabilities, got shape {:?}",
            probs.size()
        )));
    }
    let drawn = probs.f_multinomial(2, false).map_err(wrap_tch_err)?;
    Ok((drawn.f_int64_value(&[0]).map_err(wrap_tch_err)?, drawn.f_int64_value(&[1]).map_err(wrap_tch_err)?))
}
