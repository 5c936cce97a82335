//! `proxyless_rs._core`: the Rust core of proxyless-rs. This file only registers; each
//! concern lives in its own module.

use pyo3::prelude::*;

pub mod context;
pub mod hook;
pub mod kernel;
pub mod sampling;
pub mod tree;

#[pymodule]
fn _core(py: Python<'_>, m: &Bound<'_, PyModule>) -> PyResult<()> {
    // libtorch's Python bindings must be initialised before tensors cross the boundary.
    py.import("torch")?;
    m.add_class::<context::ProxylessContext>()?;
    m.add_class::<hook::BackwardHook>()?;
    m.add_class::<hook::OutputGradHook>()?;
    m.add_function(wrap_pyfunction!(sampling::sample_index, m)?)?;
    m.add_function(wrap_pyfunction!(kernel::py_alpha_grad, m)?)?;
    m.add_function(wrap_pyfunction!(kernel::rescale_two_path, m)?)?;
    Ok(())
}
