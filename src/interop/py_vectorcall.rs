//! The raw CPython call of a choice's alternative (`alternatives(k, *args, **kwargs)`), on its own:
//! CPython's vectorcall, the crate's one raw call, behind one safe function.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// `callable(k, *args, **kwargs)`: alternative `k` of a choice whose alternatives are one callable.
/// Without kwargs it goes through CPython's vectorcall, which spares the argument tuple that
/// `PyObject_Call` would build for every alternative.
pub fn call_with_index<'py>(
    callable: &Bound<'py, PyAny>,
    k: i64,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let k = k.into_pyobject(py)?;
    if kwargs.is_some() {
        let mut call_args = vec![k.into_any()];
        call_args.extend(args.iter());
        return callable.call(PyTuple::new(py, call_args)?, kwargs);
    }
    let mut argv = Vec::with_capacity(args.len() + 1);
    argv.push(k.as_ptr());
    argv.extend(args.iter_borrowed().map(|arg| arg.as_ptr()));
    // SAFETY: every pointer in argv is kept alive by `k` and `args` for the call; the result is
    // a new reference or NULL with an exception set.
    unsafe {
        let result = pyo3::ffi::PyObject_Vectorcall(callable.as_ptr(), argv.as_ptr(), argv.len(), std::ptr::null_mut());
        Bound::from_owned_ptr_or_err(py, result)
    }
}
