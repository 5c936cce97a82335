//! `proxyless_rs._core`: the Rust core of proxyless-rs. This file only registers; each
//! concern lives in its own module.

use pyo3::prelude::*;

pub mod arch;
pub mod autograd_state;
pub mod constrained;
pub mod context;
pub mod errors;
pub mod gate;
pub mod kernel;
pub mod layer;
pub mod py_vectorcall;
pub mod sampling;
pub mod saved_call;
pub mod tap;
pub mod torch_version;
pub mod tree;

#[pymodule]
fn _core(py: Python<'_>, m: &Bound<'_, PyModule>) -> PyResult<()> {
    // libtorch's Python bindings must be initialised before tensors cross the boundary, and
    // they must be the ones this module was built against.
    torch_version::check(py)?;
    m.add("TORCH_VERSION", torch_version::BUILT_AGAINST)?;
    m.add("TORCH_SPAN", torch_version::SUPPORTED)?;
    m.add_class::<arch::ArchParameter>()?;
    m.add_class::<context::ProxylessContext>()?;
    m.add_class::<tap::OutputGradHook>()?;
    m.add_function(wrap_pyfunction!(sampling::sample_index, m)?)?;
    m.add_function(wrap_pyfunction!(kernel::py_alpha_grad, m)?)?;
    m.add_function(wrap_pyfunction!(constrained::py_constrained_choice, m)?)?;
    Ok(())
}
