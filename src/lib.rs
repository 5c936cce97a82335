//! `proxyless_rs._core`: the Rust core of proxyless-rs. This file only registers; each
//! concern lives in its own module.

use pyo3::prelude::*;

pub mod arch;
pub mod choice;
pub mod constrained;
pub mod errors;
pub mod interop;
#[cfg(test)]
mod testing;

#[pymodule]
fn _core(py: Python<'_>, m: &Bound<'_, PyModule>) -> PyResult<()> {
    // libtorch's Python bindings must be initialised before tensors cross the boundary, and
    // they must be the ones this module was built against.
    interop::torch_version::check(py)?;
    m.add("TORCH_VERSION", interop::torch_version::BUILT_AGAINST)?;
    m.add("TORCH_SPAN", interop::torch_version::SUPPORTED)?;
    m.add_class::<arch::ArchParameter>()?;
    m.add_class::<choice::context::ProxylessContext>()?;
    m.add_class::<choice::tap::TapBackward>()?;
    m.add_function(wrap_pyfunction!(arch::sampling::sample_index, m)?)?;
    m.add_function(wrap_pyfunction!(arch::gradient::py_alpha_grad, m)?)?;
    m.add_function(wrap_pyfunction!(constrained::py_constrained_choices, m)?)?;
    m.add_function(wrap_pyfunction!(interop::module_call::plain_module_call, m)?)?;
    m.add_function(wrap_pyfunction!(interop::module_call::py_module_call_is_known, m)?)?;
    Ok(())
}
