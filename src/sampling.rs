//! Multinomial resampling of a mixed layer's path.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tch::{TchError, Tensor};

use crate::errors::in_context;
use crate::tree::PyTensor;

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
