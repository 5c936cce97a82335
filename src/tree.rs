//! Tensor trees: the nested tuples, lists and dicts of tensors (and other Python values)
//! that go into and come out of a mixed layer.
//!
//! Tensors cross between Python and Rust zero-copy: `as_tensor` takes a new handle on the
//! same `TensorImpl`, `to_python` wraps a handle back into a `torch.Tensor` object.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3_tch::wrap_tch_err;
use tch::Tensor;

/// The tensor behind `obj`, sharing its storage, or `None` if `obj` is not a `torch.Tensor`.
pub fn as_tensor(obj: &Bound<'_, PyAny>) -> PyResult<Option<Tensor>> {
    let ptr = obj.as_ptr() as *mut tch::python::CPyObject;
    // SAFETY: `obj` is a live Python object for the duration of the call.
    unsafe { Tensor::pyobject_unpack(ptr) }.map_err(wrap_tch_err)
}

/// Like [`as_tensor`], but a non-tensor is a `TypeError` naming `what` and the type it got.
pub fn expect_tensor(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Tensor> {
    as_tensor(obj)?.ok_or_else(|| {
        PyTypeError::new_err(format!("{what} must be a torch.Tensor, got {}", type_name(obj)))
    })
}

/// Wraps a tensor handle into a Python `torch.Tensor` (no copy of the data).
pub fn to_python(py: Python<'_>, tensor: &Tensor) -> PyResult<PyObject> {
    let ptr = tensor.pyobject_wrap().map_err(wrap_tch_err)?;
    // SAFETY: THPVariable_Wrap returns a new (owned) reference.
    Ok(unsafe { PyObject::from_owned_ptr(py, ptr as *mut pyo3::ffi::PyObject) })
}

/// The qualified name of `obj`'s type, for error messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    let ty = obj.get_type();
    match (ty.module(), ty.qualname()) {
        (Ok(m), Ok(q)) if m.to_string() != "builtins" => format!("{m}.{q}"),
        (_, Ok(q)) => q.to_string(),
        _ => "<unknown type>".to_owned(),
    }
}

/// A copy of the tree in which every tensor is detached from the autograd graph.
///
/// Containers keep their kind (tuple, list, dict); other leaves (None, numbers, modules)
/// are kept by reference. Detached tensors share storage with the originals. The identities
/// of the original tensors are added to `seen`.
pub fn detach_tree(obj: &Bound<'_, PyAny>, seen: &mut Vec<usize>) -> PyResult<PyObject> {
    let py = obj.py();
    if let Some(tensor) = as_tensor(obj)? {
        seen.push(obj.as_ptr() as usize);
        return to_python(py, &tensor.f_detach().map_err(wrap_tch_err)?);
    }
    if let Ok(tuple) = obj.downcast::<PyTuple>() {
        let items = tuple.iter().map(|item| detach_tree(&item, seen)).collect::<PyResult<Vec<_>>>()?;
        return Ok(PyTuple::new(py, items)?.into_any().unbind());
    }
    if let Ok(list) = obj.downcast::<PyList>() {
        let items = list.iter().map(|item| detach_tree(&item, seen)).collect::<PyResult<Vec<_>>>()?;
        return Ok(PyList::new(py, items)?.into_any().unbind());
    }
    if let Ok(dict) = obj.downcast::<PyDict>() {
        let detached = PyDict::new(py);
        for (key, value) in dict.iter() {
            detached.set_item(key, detach_tree(&value, seen)?)?;
        }
        return Ok(detached.into_any().unbind());
    }
    Ok(obj.clone().unbind())
}

/// A candidate's output taken apart: its elements in a fixed order and, for a dict, the keys in
/// that order (sorted when they sort, so that candidates building their dicts in different
/// orders still line up).
pub struct OutputParts<'py> {
    pub items: Vec<Bound<'py, PyAny>>,
    pub keys: Option<Vec<Bound<'py, PyAny>>>,
}

/// Takes a tensor, a tuple or list, or a dict apart (see [`OutputParts`]); `None` for anything else.
pub fn output_parts<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Option<OutputParts<'py>>> {
    if as_tensor(obj)?.is_some() {
        return Ok(Some(OutputParts { items: vec![obj.clone()], keys: None }));
    }
    if obj.downcast::<PyTuple>().is_ok() || obj.downcast::<PyList>().is_ok() {
        return Ok(Some(OutputParts { items: obj.try_iter()?.collect::<PyResult<_>>()?, keys: None }));
    }
    if let Ok(dict) = obj.downcast::<PyDict>() {
        let py = obj.py();
        let keys: Vec<Bound<'py, PyAny>> = match py.import("builtins")?.getattr("sorted")?.call1((dict,)) {
            Ok(sorted) => sorted.try_iter()?.collect::<PyResult<_>>()?,
            Err(_) => dict.keys().iter().collect(),
        };
        let items = keys.iter().map(|key| dict.as_any().get_item(key)).collect::<PyResult<_>>()?;
        return Ok(Some(OutputParts { items, keys: Some(keys) }));
    }
    Ok(None)
}

/// The tensors of a candidate's output and, for a dict output, its keys (as `str`).
pub type OutputTensors = (Vec<Tensor>, Option<Vec<String>>);

/// The tensors of a candidate's output: a tensor, or a tuple, list or dict of tensors.
///
/// These are the outputs whose gradients the backward can pair with each candidate's, so
/// anything else is refused with a `TypeError` that names `what` and the offending type.
pub fn output_tensors(obj: &Bound<'_, PyAny>, what: &dyn Fn() -> String) -> PyResult<OutputTensors> {
    const EXPECTED: &str = "a ProxylessNAS candidate must return a torch.Tensor, or a tuple, list or dict of tensors";
    let Some(parts) = output_parts(obj)? else {
        return Err(PyTypeError::new_err(format!("{} returned {}; {EXPECTED}", what(), type_name(obj))));
    };
    let tensors = parts
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            as_tensor(item)?.ok_or_else(|| {
                let at = match &parts.keys {
                    Some(keys) => format!("whose value at {}", keys[i]),
                    None => format!("whose element {i}"),
                };
                PyTypeError::new_err(format!("{} returned a {} {at} is {}; {EXPECTED}", what(), type_name(obj), type_name(item)))
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let keys = parts.keys.map(|keys| keys.iter().map(|key| key.str().map(|k| k.to_string())).collect::<PyResult<Vec<_>>>()).transpose()?;
    Ok((tensors, keys))
}

/// Gradients as autograd hands them to a hook: a tensor, `None`, or a tuple of tensors and `None`s
/// (a full backward hook's `grad_output`, or what `GradientTap` passes on).
pub fn optional_tensors(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Option<Tensor>>> {
    if obj.is_none() {
        return Ok(vec![None]);
    }
    if let Some(tensor) = as_tensor(obj)? {
        return Ok(vec![Some(tensor)]);
    }
    let tuple = obj.downcast::<PyTuple>().map_err(|_| {
        PyTypeError::new_err(format!(
            "grad_output must be a tuple of tensors or None, got {}",
            type_name(obj)
        ))
    })?;
    tuple
        .iter()
        .map(|item| {
            if item.is_none() {
                Ok(None)
            } else {
                expect_tensor(&item, "each element of grad_output").map(Some)
            }
        })
        .collect()
}
