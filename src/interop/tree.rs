//! Tensor trees: the nested tuples, lists and dicts of tensors (and other Python values)
//! that go into and come out of a mixed layer.
//!
//! Tensors cross between Python and Rust zero-copy: `as_tensor` takes a new handle on the
//! same `TensorImpl`, `to_python` wraps a handle back into a `torch.Tensor` object. Containers
//! are rebuilt as their own type (a namedtuple stays that namedtuple, an `OrderedDict` an
//! `OrderedDict`), so candidates see in backward what they saw in forward.

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple, PyType};
use tch::Tensor;

/// The tensor behind `obj`, sharing its storage, or `None` if `obj` is not a `torch.Tensor`.
pub fn as_tensor(obj: &Bound<'_, PyAny>) -> PyResult<Option<Tensor>> {
    let ptr = obj.as_ptr() as *mut tch::python::CPyObject;
    // SAFETY: `obj` is a live Python object for the duration of the call.
    unsafe { Tensor::pyobject_unpack(ptr) }.map_err(|err| PyTypeError::new_err(crate::errors::message(&err)))
}

/// Like [`as_tensor`], but a non-tensor is a `TypeError` naming `what` and the type it got.
pub fn expect_tensor(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Tensor> {
    as_tensor(obj)?
        .ok_or_else(|| PyTypeError::new_err(format!("{what} must be a torch.Tensor, got {}", type_name(obj))))
}

/// Wraps a tensor handle into a Python `torch.Tensor` (no copy of the data).
pub fn to_python(py: Python<'_>, tensor: &Tensor) -> PyResult<PyObject> {
    let ptr = tensor.pyobject_wrap().map_err(|err| PyTypeError::new_err(crate::errors::message(&err)))?;
    // SAFETY: THPVariable_Wrap returns a new (owned) reference.
    Ok(unsafe { PyObject::from_owned_ptr(py, ptr as *mut pyo3::ffi::PyObject) })
}

/// A `torch.Tensor` argument or result of a `#[pyfunction]`, crossing zero-copy through
/// [`as_tensor`] and [`to_python`].
///
/// pyo3-tch has the same few lines, but each of its releases is tied to one pyo3 and one tch
/// release (0.13-0.15 to pyo3 0.18, 0.16-0.19 to pyo3 0.21): owning them lets one pyo3 build
/// against every tch release of the span (tch's `python-extension` functions are the same in all).
pub struct PyTensor(pub Tensor);

impl std::ops::Deref for PyTensor {
    type Target = Tensor;

    fn deref(&self) -> &Tensor {
        &self.0
    }
}

impl<'py> FromPyObject<'py> for PyTensor {
    fn extract_bound(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        // pyo3 prefixes the argument's name: "argument 'probs': expected a torch.Tensor, got list".
        as_tensor(obj)?
            .map(PyTensor)
            .ok_or_else(|| PyTypeError::new_err(format!("expected a torch.Tensor, got {}", type_name(obj))))
    }
}

impl<'py> IntoPyObject<'py> for PyTensor {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.0).map(|obj| obj.into_bound(py))
    }
}

/// The qualified name of `obj`'s type, for error messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    let ty = obj.get_type();
    match (ty.module(), ty.qualname()) {
        (Ok(m), Ok(q)) if m != "builtins" => format!("{m}.{q}"),
        (_, Ok(q)) => q.to_string(),
        _ => "<unknown type>".to_owned(),
    }
}

/// A tensor's version counter (`Tensor._version`): in-place operations bump it, and a detached
/// alias shares it with the original.
pub fn version(tensor: &Bound<'_, PyAny>) -> PyResult<i64> {
    tensor.getattr(intern!(tensor.py(), "_version"))?.extract()
}

/// `items` rebuilt as a sequence of `like`'s type: a tuple or list as such, a namedtuple through
/// `_make`, any other subclass through its constructor.
pub fn rebuild_sequence<'py>(like: &Bound<'py, PyAny>, items: Vec<PyObject>) -> PyResult<Bound<'py, PyAny>> {
    let py = like.py();
    let ty = like.get_type();
    if ty.is(&py.get_type::<PyTuple>()) {
        return Ok(PyTuple::new(py, items)?.into_any());
    }
    if ty.is(&py.get_type::<PyList>()) {
        return Ok(PyList::new(py, items)?.into_any());
    }
    if like.downcast::<PyTuple>().is_ok() && ty.hasattr(intern!(py, "_make"))? {
        return ty.call_method1(intern!(py, "_make"), (PyTuple::new(py, items)?,));
    }
    rebuild_with_constructor(&ty, PyList::new(py, items)?.into_any())
}

fn rebuild_with_constructor<'py>(ty: &Bound<'py, PyType>, contents: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    ty.call1((contents,)).map_err(|err| {
        PyTypeError::new_err(format!(
            "cannot rebuild a {} from its items ({err}); a mixed layer's inputs and outputs may be tensors, \
             tuples (namedtuples included), lists and dicts, and subclasses that their constructor rebuilds",
            ty.qualname().map(|q| q.to_string()).unwrap_or_default()
        ))
    })
}

/// A copy of `dict` as its own type (`dict.copy()` for a plain dict, `copy.copy` for a subclass
/// such as `OrderedDict`), into which items can be set without touching the original.
pub fn copy_dict<'py>(dict: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyDict>> {
    let py = dict.py();
    if dict.get_type().is(&py.get_type::<PyDict>()) {
        return dict.copy();
    }
    let copied = py.import(intern!(py, "copy"))?.call_method1(intern!(py, "copy"), (dict,))?;
    copied.downcast_into::<PyDict>().map_err(Into::into)
}

/// A copy of the tree in which every tensor is detached from the autograd graph.
///
/// Containers keep their type (see [`rebuild_sequence`], [`copy_dict`]); other leaves (None,
/// numbers, modules) are kept by reference. Detached tensors share storage and version counter
/// with the originals. Each tensor is added to `seen` as (identity of the original, detached copy).
pub fn detach_tree(obj: &Bound<'_, PyAny>, seen: &mut Vec<(usize, PyObject)>) -> PyResult<PyObject> {
    let py = obj.py();
    if let Some(tensor) = as_tensor(obj)? {
        let detached =
            to_python(py, &tensor.f_detach().map_err(|err| PyTypeError::new_err(crate::errors::message(&err)))?)?;
        seen.push((obj.as_ptr() as usize, detached.clone_ref(py)));
        return Ok(detached);
    }
    if obj.downcast::<PyTuple>().is_ok() || obj.downcast::<PyList>().is_ok() {
        let items = obj.try_iter()?.map(|item| detach_tree(&item?, seen)).collect::<PyResult<Vec<_>>>()?;
        return Ok(rebuild_sequence(obj, items)?.unbind());
    }
    if let Ok(dict) = obj.downcast::<PyDict>() {
        let detached = copy_dict(dict)?;
        for (key, value) in dict.iter() {
            detached.set_item(key, detach_tree(&value, seen)?)?;
        }
        return Ok(detached.into_any().unbind());
    }
    Ok(obj.clone().unbind())
}

/// Whether a tensor is anywhere inside `obj` (through tuples, lists and dicts).
pub fn contains_tensor(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    if as_tensor(obj)?.is_some() {
        return Ok(true);
    }
    if obj.downcast::<PyTuple>().is_ok() || obj.downcast::<PyList>().is_ok() {
        for item in obj.try_iter()? {
            if contains_tensor(&item?)? {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    if let Ok(dict) = obj.downcast::<PyDict>() {
        for value in dict.values() {
            if contains_tensor(&value)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A candidate's output taken apart: its elements in a fixed order and, for a dict, the keys in
/// that order (sorted when they sort, so that candidates building their dicts in different
/// orders still line up). A tensor output is one element.
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
        let keys: Vec<Bound<'py, PyAny>> =
            match py.import(intern!(py, "builtins"))?.getattr(intern!(py, "sorted"))?.call1((dict,)) {
                Ok(sorted) => sorted.try_iter()?.collect::<PyResult<_>>()?,
                Err(_) => dict.keys().iter().collect(),
            };
        let items = keys.iter().map(|key| dict.as_any().get_item(key)).collect::<PyResult<_>>()?;
        return Ok(Some(OutputParts { items, keys: Some(keys) }));
    }
    Ok(None)
}

/// What the backward needs of a candidate's output: per element, its tensor (`None` for an element
/// that is not a tensor), and for a dict its keys (as `str`).
pub struct OutputTensors {
    pub tensors: Vec<Option<Tensor>>,
    /// Per element, the type name of a value that is neither a tensor nor None.
    pub others: Vec<Option<String>>,
    pub keys: Option<Vec<String>>,
}

impl OutputTensors {
    /// "keys ['a', 'b']", "3 elements" or "a tensor": the structure, for error messages.
    pub fn describe(&self) -> String {
        match &self.keys {
            Some(keys) => format!("keys [{}]", keys.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")),
            None if self.tensors.len() == 1 => "1 element".to_owned(),
            None => format!("{} elements", self.tensors.len()),
        }
    }
}

const EXPECTED: &str = "a ProxylessNAS candidate must return a torch.Tensor, or a tuple, list or dict whose \
                        elements are tensors or non-tensor values (None, numbers, ...) that pass through";

fn position(keys: &Option<Vec<Bound<'_, PyAny>>>, i: usize) -> String {
    match keys {
        Some(keys) => format!("value at {}", keys[i].repr().map(|r| r.to_string()).unwrap_or_default()),
        None => format!("element {i}"),
    }
}

/// A candidate's output taken apart (see [`OutputParts`]), and its tensors (see [`OutputTensors`]).
///
/// Non-tensor elements pass through and take no part in the binary gates, as in NNI. A tensor
/// nested deeper (a tuple inside the tuple) is refused with a `TypeError` naming `what`, the
/// position and the type: its gradient could not be paired with the other candidates' outputs,
/// so its gate term would be silently missing. So is an output that is no tensor or container.
pub fn output_tensors<'py>(
    obj: &Bound<'py, PyAny>,
    what: &dyn Fn() -> String,
) -> PyResult<(OutputParts<'py>, OutputTensors)> {
    if let Some(tensor) = as_tensor(obj)? {
        // The common case, without taking the tensor apart twice.
        let parts = OutputParts { items: vec![obj.clone()], keys: None };
        return Ok((parts, OutputTensors { tensors: vec![Some(tensor)], others: vec![None], keys: None }));
    }
    let Some(parts) = output_parts(obj)? else {
        return Err(PyTypeError::new_err(format!("{} returned {}; {EXPECTED}", what(), type_name(obj))));
    };
    let mut tensors = Vec::with_capacity(parts.items.len());
    let mut others = Vec::with_capacity(parts.items.len());
    for (i, item) in parts.items.iter().enumerate() {
        let tensor = as_tensor(item)?;
        if tensor.is_none() && contains_tensor(item)? {
            return Err(PyTypeError::new_err(format!(
                "{} returned a {} whose {} is a {} holding tensors; nested containers are not supported: {EXPECTED}",
                what(),
                type_name(obj),
                position(&parts.keys, i),
                type_name(item)
            )));
        }
        others.push(if tensor.is_none() && !item.is_none() { Some(type_name(item)) } else { None });
        tensors.push(tensor);
    }
    let keys = parts
        .keys
        .as_ref()
        .map(|keys| keys.iter().map(|key| key.str().map(|k| k.to_string())).collect::<PyResult<Vec<_>>>())
        .transpose()?;
    Ok((parts, OutputTensors { tensors, others, keys }))
}

/// Gradients as autograd hands them to a hook: a tensor, `None`, or a tuple of tensors and `None`s
/// (what the gradient tap passes on).
pub fn optional_tensors(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Option<Tensor>>> {
    if obj.is_none() {
        return Ok(vec![None]);
    }
    if let Some(tensor) = as_tensor(obj)? {
        return Ok(vec![Some(tensor)]);
    }
    let tuple = obj.downcast::<PyTuple>().map_err(|_| {
        PyTypeError::new_err(format!("gradients must be a tensor, None or a tuple of them, got {}", type_name(obj)))
    })?;
    tuple
        .iter()
        .map(|item| if item.is_none() { Ok(None) } else { expect_tensor(&item, "each gradient").map(Some) })
        .collect()
}
