//! An alternative of a choice called on a call's arguments, without the Python frames in between
//! where they do nothing: `nn.Module.__call__` when no hook is registered (it then calls
//! `forward`), and, for an exact `torch.nn.Linear` on a plain tensor, `Linear.forward` itself
//! (`F.linear` on the module's parameters: the same libtorch op, so the same values and the same
//! graph). Which object is alternative `k` is the Python side's to say (see [`call_alternative`]).
//!
//! Each shortcut is taken only where the Python path is known to do exactly that; anything else
//! (a hook anywhere, a compiled or traced module, a subclass, a tensor subclass or a torch
//! function mode, an error) goes through the Python call. In an overhead-bound search these frames
//! are a third of a small candidate's call (issue #20).
//!
//! The same knowledge of `nn.Module.__call__` decides whether a mixed layer's own call may skip
//! it ([`plain_module_call`], which the Python layers ask): one place that knows what the module
//! call reads, and that turns every shortcut off on a torch whose call reads more.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::interop::tree;

/// What the shortcuts compare against, looked up once.
struct Torch {
    /// Whether this torch's module call is the one the shortcuts know ([`module_call_is_known`]).
    module_call_known: bool,
    /// [`GLOBAL_HOOKS`], interned.
    global_hooks: Vec<Py<PyString>>,
    /// Those of `torch.nn.Module.__call__`, `_call_impl` and `_wrapped_call_impl` this torch has,
    /// by name, `__call__` first. One it lacks (torch 2.0 has no `_wrapped_call_impl`) is not
    /// looked up on the candidate's class: its `__call__` does not call it, and the failed lookup
    /// would raise and clear an AttributeError on every call (about 2 us, and garbage for the
    /// collector).
    module_call: Vec<(Py<PyString>, PyObject)>,
    /// `torch.nn.Module` itself: a class whose own `__call__` skips nn.Module's must still see a
    /// patch of nn.Module's (`torch.fx`'s tracer patches it for the length of a trace).
    module_class: PyObject,
    /// The globals of `torch.nn.modules.module`, where the global module hooks live.
    module_globals: Py<PyDict>,
    linear: PyObject,
    linear_forward: PyObject,
    tensor: PyObject,
    parameter: PyObject,
    tracing_state: PyObject,
    function_mode_enabled: Option<PyObject>,
}

impl Torch {
    fn get(py: Python<'_>) -> PyResult<&Torch> {
        static TORCH: GILOnceCell<Torch> = GILOnceCell::new();
        TORCH.get_or_try_init(py, || {
            let nn = py.import("torch.nn")?;
            let module = nn.getattr("Module")?;
            let module_call = ["__call__", "_call_impl", "_wrapped_call_impl"]
                .iter()
                .filter_map(|name| Some((PyString::intern(py, name).unbind(), module.getattr(*name).ok()?.unbind())))
                .collect();
            let module_globals = py.import("torch.nn.modules.module")?.dict().unbind();
            let module_call_known = module_call_is_known(py)?;
            let linear = nn.getattr("Linear")?;
            let linear_forward = linear.getattr("__dict__")?.get_item("forward")?.unbind();
            let c = py.import("torch._C")?;
            Ok(Torch {
                module_class: module.clone().unbind(),
                module_call_known,
                global_hooks: GLOBAL_HOOKS.iter().map(|name| PyString::intern(py, name).unbind()).collect(),
                module_call,
                module_globals,
                linear: linear.unbind().into_any(),
                linear_forward,
                tensor: py.import("torch")?.getattr("Tensor")?.unbind(),
                parameter: nn.getattr("Parameter")?.unbind(),
                tracing_state: c.getattr("_get_tracing_state")?.unbind(),
                function_mode_enabled: c.getattr("_is_torch_function_mode_enabled").ok().map(Bound::unbind),
            })
        })
    }
}

/// The module hooks' global dicts in `torch.nn.modules.module`, which a call with no hook reads.
const GLOBAL_HOOKS: [&str; 4] =
    ["_global_backward_hooks", "_global_backward_pre_hooks", "_global_forward_hooks", "_global_forward_pre_hooks"];

/// Whether `nn.Module.__call__` is the call the shortcuts know, as this torch has it now:
/// `_call_impl` (torch 2.0), or `_wrapped_call_impl` reading `_compiled_call_impl` and
/// `_call_impl` alone (torch 2.1 on); `_call_impl` reading no global of its module but the four
/// hook dicts (and the always-called flags, which only those hooks set), all four present. A torch
/// whose call reads another global (a new kind of hook) gets the full call everywhere: slower,
/// never wrong. Computed once per process for the shortcuts; `module_call_is_known` in Python
/// computes it again (a test patches the call).
pub fn module_call_is_known(py: Python<'_>) -> PyResult<bool> {
    let module = py.import("torch.nn")?.getattr("Module")?;
    let names_of = |function: &Bound<'_, PyAny>| -> PyResult<Vec<String>> {
        function.getattr("__code__")?.getattr("co_names")?.extract::<Vec<String>>()
    };
    let Ok(call_impl) = module.getattr("_call_impl") else { return Ok(false) };
    let call = module.getattr("__call__")?;
    let wrapped = module.getattr("_wrapped_call_impl").ok();
    if !call.is(&call_impl) {
        let Some(wrapped) = wrapped.filter(|wrapped| call.is(wrapped)) else { return Ok(false) };
        if !names_of(&wrapped)?.iter().all(|name| name == "_compiled_call_impl" || name == "_call_impl") {
            return Ok(false);
        }
    }
    let known = |name: &str| GLOBAL_HOOKS.contains(&name) || name == "_global_forward_hooks_always_called";
    if !names_of(&call_impl)?.iter().filter(|name| name.starts_with("_global")).all(|name| known(name)) {
        return Ok(false);
    }
    let globals = py.import("torch.nn.modules.module")?.dict();
    for name in GLOBAL_HOOKS {
        if !globals.contains(name)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `obj.__dict__`, without a descriptor call.
fn instance_dict<'py>(obj: &Bound<'py, PyAny>) -> Option<Bound<'py, PyDict>> {
    // SAFETY: PyObject_GenericGetDict returns a new reference or NULL with an exception set.
    let dict = unsafe { pyo3::ffi::PyObject_GenericGetDict(obj.as_ptr(), std::ptr::null_mut()) };
    if dict.is_null() {
        let _ = PyErr::take(obj.py());
        return None;
    }
    // SAFETY: a new, owned reference.
    let dict = unsafe { Bound::from_owned_ptr(obj.py(), dict) };
    dict.downcast_into::<PyDict>().ok()
}

/// Whether `dict[name]` is an empty container (false where it is missing: not the torch we know).
fn empty_entry(dict: &Bound<'_, PyDict>, name: &Bound<'_, PyString>) -> bool {
    matches!(dict.get_item(name), Ok(Some(value)) if value.len().is_ok_and(|n| n == 0))
}

/// Whether `candidate(*args)` would do nothing but call `candidate.forward(*args)`: the class's
/// `__call__` is `nn.Module`'s (where `own_call`, the class's own `__call__` is the caller's to
/// vouch for: nn.Module's must be unpatched, and the class's `_call_impl` and `_wrapped_call_impl`
/// nn.Module's), no hook of the module or global one is registered, it is not compiled
/// (`module.compile()`), and no trace is running; never on a torch whose module call is not the
/// known one.
fn calls_forward_only(torch: &Torch, candidate: &Bound<'_, PyAny>, dict: &Bound<'_, PyDict>, own_call: bool) -> bool {
    if !torch.module_call_known {
        return false;
    }
    let py = candidate.py();
    if own_call {
        let (name, original) = &torch.module_call[0];
        match torch.module_class.bind(py).getattr(name.bind(py)) {
            Ok(found) if found.is(original) => {}
            _ => return false,
        }
    }
    let ty = candidate.get_type();
    for (name, original) in torch.module_call.iter().skip(usize::from(own_call)) {
        match ty.getattr(name.bind(py)) {
            Ok(found) if found.is(original) => {}
            _ => return false,
        }
    }
    if let Ok(Some(compiled)) = dict.get_item(intern!(py, "_compiled_call_impl")) {
        if !compiled.is_none() {
            return false;
        }
    }
    let globals = torch.module_globals.bind(py);
    let hooks = [
        intern!(py, "_backward_hooks"),
        intern!(py, "_backward_pre_hooks"),
        intern!(py, "_forward_hooks"),
        intern!(py, "_forward_pre_hooks"),
    ];
    hooks.iter().all(|name| empty_entry(dict, name))
        && torch.global_hooks.iter().all(|name| empty_entry(globals, name.bind(py)))
        && torch.tracing_state.call0(py).is_ok_and(|state| state.is_none(py))
}

/// Whether calling `module`, whose class overrides `__call__` to skip nn.Module's where this
/// holds (proxyless_rs's mixed layers), would otherwise call `forward` and nothing else: no hook
/// of any kind, no compiled call, no trace ([`calls_forward_only`]). Dynamo is the caller's to
/// rule out (`is_compiling()` must be seen by Dynamo in Python, where it folds to True).
#[pyfunction]
pub fn plain_module_call(module: &Bound<'_, PyAny>) -> bool {
    let py = module.py();
    match (Torch::get(py), instance_dict(module)) {
        (Ok(torch), Some(dict)) => calls_forward_only(torch, module, &dict, true),
        _ => false,
    }
}

/// [`module_call_is_known`] for Python, computed now (the shortcuts use the value computed once).
#[pyfunction]
#[pyo3(name = "module_call_is_known")]
pub fn py_module_call_is_known(py: Python<'_>) -> PyResult<bool> {
    module_call_is_known(py)
}

/// `F.linear(x, weight, bias)` for an exact `nn.Linear` whose `forward` is torch's, on one plain
/// tensor, with plain parameters and no torch function mode; `None` where any of that does not
/// hold, or libtorch refuses (the Python call then raises the error it raises).
fn linear(
    torch: &Torch,
    candidate: &Bound<'_, PyAny>,
    dict: &Bound<'_, PyDict>,
    args: &Bound<'_, PyTuple>,
) -> Option<PyObject> {
    let py = candidate.py();
    if !candidate.get_type().is(torch.linear.bind(py)) || args.len() != 1 {
        return None;
    }
    let ty = candidate.get_type();
    if !ty.getattr(intern!(py, "forward")).ok()?.is(torch.linear_forward.bind(py)) {
        return None;
    }
    for name in [intern!(py, "forward"), intern!(py, "weight"), intern!(py, "bias")] {
        if dict.contains(name).ok()? {
            return None;
        }
    }
    if let Some(enabled) = &torch.function_mode_enabled {
        if enabled.call0(py).ok()?.is_truthy(py).ok()? {
            return None;
        }
    } else {
        return None;
    }
    let plain = |t: &Bound<'_, PyAny>, parameter_too: bool| {
        let ty = t.get_type();
        ty.is(torch.tensor.bind(py)) || (parameter_too && ty.is(torch.parameter.bind(py)))
    };
    let input = args.get_item(0).ok()?;
    let params = dict.get_item(intern!(py, "_parameters")).ok()??;
    let params = params.downcast::<PyDict>().ok()?;
    let weight = params.get_item(intern!(py, "weight")).ok()??;
    let bias = params.get_item(intern!(py, "bias")).ok()??;
    if !plain(&input, false) || !plain(&weight, true) || !(bias.is_none() || plain(&bias, true)) {
        return None;
    }
    let (input, weight) = (tree::as_tensor(&input).ok()??, tree::as_tensor(&weight).ok()??);
    let bias = if bias.is_none() { None } else { Some(tree::as_tensor(&bias).ok()??) };
    let out = input.f_linear(&weight, bias.as_ref()).ok()?;
    tree::to_python(py, &out).ok()
}

/// `candidate(*args)`, `candidate.forward(*args)` where that is all the call does, or the
/// linear op of an `nn.Linear` (see [`linear`]).
fn call_module<'py>(
    candidate: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = candidate.py();
    let (Ok(torch), Some(dict)) = (Torch::get(py), instance_dict(candidate)) else {
        return candidate.call(args, kwargs);
    };
    if !calls_forward_only(torch, candidate, &dict, false) {
        return candidate.call(args, kwargs);
    }
    if kwargs.is_none() {
        if let Some(out) = linear(torch, candidate, &dict, args) {
            return Ok(out.into_bound(py));
        }
    }
    candidate.call_method(intern!(py, "forward"), args, kwargs)
}

/// Alternative `k` of a choice on a call's arguments. `alternatives` is what the Python side
/// handed over for the choice: a list or tuple whose item `k` is called as `item(*args, **kwargs)`
/// (an `nn.Module` item through [`call_module`]'s shortcuts), or any other callable, called as
/// `alternatives(k, *args, **kwargs)`.
pub fn call_alternative<'py>(
    alternatives: &Bound<'py, PyAny>,
    k: i64,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Ok(list) = alternatives.downcast::<PyList>() {
        return call_module(&list.get_item(index(k, list.len())?)?, args, kwargs);
    }
    if let Ok(tuple) = alternatives.downcast::<PyTuple>() {
        return call_module(&tuple.get_item(index(k, tuple.len())?)?, args, kwargs);
    }
    crate::interop::py_vectorcall::call_with_index(alternatives, k, args, kwargs)
}

/// `k` as an index into `len` alternatives.
fn index(k: i64, len: usize) -> PyResult<usize> {
    usize::try_from(k).ok().filter(|&i| i < len).ok_or_else(|| {
        pyo3::exceptions::PyIndexError::new_err(format!("alternative {k} of a choice with {len} alternatives"))
    })
}
