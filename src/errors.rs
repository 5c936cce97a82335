//! libtorch errors as a torch user expects them: `RuntimeError` (or `torch.OutOfMemoryError`),
//! libtorch's message without its C++ backtrace, prefixed with what failed.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use tch::TchError;

/// libtorch's own message: the text before the "Exception raised from ..." backtrace that a
/// C++ `c10::Error` appends (torch's Python bindings show the same part).
pub fn message(err: &TchError) -> String {
    let text = match err {
        TchError::Torch(msg) | TchError::Shape(msg) | TchError::Kind(msg) | TchError::Convert(msg) => msg.clone(),
        other => other.to_string(),
    };
    text.split("Exception raised from").next().unwrap_or_default().trim().to_owned()
}

/// `err` as the Python exception torch raises for it, its message prefixed with `prefix: `.
pub fn torch_error(py: Python<'_>, prefix: &str, err: &TchError) -> PyErr {
    let text = format!("{prefix}: {}", message(err));
    if let TchError::Shape(_) = err {
        return PyValueError::new_err(text);
    }
    if text.contains("out of memory") {
        if let Ok(oom) = py.import("torch").and_then(|torch| torch.getattr("OutOfMemoryError")) {
            if let Ok(instance) = oom.call1((text.clone(),)) {
                return PyErr::from_value(instance);
            }
        }
    }
    PyRuntimeError::new_err(text)
}

/// A closure mapping a libtorch error to a Python one with `prefix` (for `map_err`).
pub fn in_context(prefix: &str) -> impl Fn(TchError) -> PyErr + '_ {
    move |err| Python::with_gil(|py| torch_error(py, prefix, &err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_message_and_drops_the_backtrace() {
        let err = TchError::Torch(
            "probability tensor contains either `inf`, `nan` or element < 0\nException raised from \
             multinomial at /pytorch/aten/src/ATen/native/Distributions.cpp:600 (most recent call first):\nframe #0: \
             c10::Error::Error"
                .to_owned(),
        );
        assert_eq!(message(&err), "probability tensor contains either `inf`, `nan` or element < 0");
        assert_eq!(message(&TchError::Shape("a\nb".to_owned())), "a\nb");
    }
}
