//! The binary-gate backward that turns a mixed layer's output gradient into `arch_alpha.grad`,
//! run by a hook on that call's output tensors, which owns that call's saved forward.

use std::sync::Mutex;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyTuple};
use tch::Tensor;

use crate::context::{LiveCall, ProxylessContext};
use crate::errors::in_context;
use crate::{kernel, tree};

/// A tensor of a saved call whose value the backward relies on, with its version at save time.
pub struct Watched {
    /// A detached alias: it shares the original's version counter, not its autograd history
    /// (holding the output itself would keep its graph, and this hook, alive in a cycle).
    tensor: PyObject,
    version: i64,
    /// `None` for an input, else the output element.
    output_element: Option<usize>,
}

impl Watched {
    pub fn input(tensor: PyObject, version: i64) -> Self {
        Self { tensor, version, output_element: None }
    }
}

/// What one forward call left for its backward: owned by the hook on that call's output.
pub struct SavedCall {
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
    /// Detached output elements (`None` for pass-through values), and a dict output's keys.
    output: tree::OutputTensors,
    sample_idx: i64,
    /// Two-path mode: the one unsampled candidate whose gate takes part.
    partner: Option<i64>,
    watched: Vec<Watched>,
    _live: LiveCall,
}

impl SavedCall {
    pub fn new(
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
        sample_idx: i64,
        partner: Option<i64>,
        watched: Vec<Watched>,
        live: LiveCall,
    ) -> Self {
        let output = tree::OutputTensors { tensors: Vec::new(), others: Vec::new(), keys: None };
        Self { args, kwargs, output, sample_idx, partner, watched, _live: live }
    }
}

/// `forward_path(k, *args, **kwargs)`. Without kwargs it goes through CPython's vectorcall,
/// which spares the argument tuple that `PyObject_Call` would build for every candidate.
pub fn call_forward_path<'py>(
    forward_path: &Bound<'py, PyAny>,
    k: i64,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = forward_path.py();
    let k = k.into_pyobject(py)?;
    if kwargs.is_some() {
        let mut call_args = vec![k.into_any()];
        call_args.extend(args.iter());
        return forward_path.call(PyTuple::new(py, call_args)?, kwargs);
    }
    let mut argv = Vec::with_capacity(args.len() + 1);
    argv.push(k.as_ptr());
    argv.extend(args.iter_borrowed().map(|arg| arg.as_ptr()));
    // SAFETY: every pointer in argv is kept alive by `k` and `args` for the call; the result is
    // a new reference or NULL with an exception set.
    unsafe {
        let result =
            pyo3::ffi::PyObject_Vectorcall(forward_path.as_ptr(), argv.as_ptr(), argv.len(), std::ptr::null_mut());
        Bound::from_owned_ptr_or_err(py, result)
    }
}

/// Adds a note (Python 3.11+) saying where an exception raised by a candidate came from.
fn with_note(py: Python<'_>, err: PyErr, note: String) -> PyErr {
    let value = err.value(py);
    if value.hasattr(intern!(py, "add_note")).unwrap_or(false) {
        let _ = value.call_method1(intern!(py, "add_note"), (note,));
    }
    err
}

/// Refuses a backward whose saved tensors were modified in place since the forward.
fn check_versions(ctx: &ProxylessContext, py: Python<'_>, call: &SavedCall) -> PyResult<()> {
    for watched in &call.watched {
        if tree::version(watched.tensor.bind(py))? == watched.version {
            continue;
        }
        let what = match watched.output_element {
            Some(_) if call.output.tensors.len() == 1 => "its output".to_owned(),
            Some(i) => format!("element {i} of its output"),
            None => "one of its inputs".to_owned(),
        };
        return Err(PyRuntimeError::new_err(format!(
            "{}: {what} was modified in place after the forward (e.g. `y += x` or an op with inplace=True on \
             the layer's output); the binary gate of the sampled path needs the values the layer computed. \
             Use the out-of-place form (`y = y + x`).",
            ctx.name()
        )));
    }
    Ok(())
}

/// The elements of candidate `k`'s output, checked against the sampled candidate's structure.
fn candidate_output(
    ctx: &ProxylessContext,
    module: &Bound<'_, PyAny>,
    call: &SavedCall,
    k: i64,
    out: &Bound<'_, PyAny>,
    grads: &[Option<Tensor>],
) -> PyResult<Vec<Option<Tensor>>> {
    let describe = || format!("{}: {}", ctx.name(), ctx.describe_candidate(module, k));
    let output = tree::output_tensors(out, &describe)?;
    if output.keys != call.output.keys || output.tensors.len() != call.output.tensors.len() {
        return Err(PyValueError::new_err(format!(
            "{} returned {}, but the sampled candidate returned {}; all candidates must return the same structure",
            describe(),
            output.describe(),
            call.output.describe()
        )));
    }
    for (i, grad) in grads.iter().enumerate() {
        if let (Some(_), Some(other)) = (grad, &output.others[i]) {
            return Err(PyTypeError::new_err(format!(
                "{} returned {other} at element {i}, where the sampled candidate returned a tensor that received a \
                 gradient; the binary gate needs a tensor (or None) there",
                describe()
            )));
        }
    }
    Ok(output.tensors)
}

/// Adds the binary-gate gradient of one call into `arch_alpha.grad`.
///
/// `grads` holds one entry per output element of the layer (`None` where no gradient flowed).
/// The other candidates are evaluated on the saved inputs through `module.forward_path` (under
/// `no_grad`, in index order, so random ops draw what NNI's hook draws), each gate's gradient is
/// `sum(out_k * grad_output)`, and the closed-form alpha gradient is added into `alpha.grad` in
/// place: it is created if missing and never replaced, so gradients from other losses on alpha add
/// up. Everything stays on alpha's device: no host round trip.
fn run_backward(
    ctx: &ProxylessContext,
    module: &Bound<'_, PyAny>,
    call: &SavedCall,
    grads: &[Option<Tensor>],
) -> PyResult<()> {
    let py = module.py();
    check_versions(ctx, py, call)?;
    let arch = ctx.arch(py).get();
    let alpha_obj = arch.alpha_object(py);
    let alpha = arch.tensor(py)?;
    let options = (alpha.kind(), alpha.device());
    let n_candidates = alpha.size().first().copied().unwrap_or(0);
    let in_layer = in_context(ctx.name());

    let _no_grad = tch::no_grad_guard();
    let forward_path = module.getattr(intern!(py, "forward_path"))?;
    let args = call.args.bind(py);
    let kwargs = call.kwargs.as_ref().map(|kwargs| kwargs.bind(py));
    // Full mode evaluates every candidate; two-path mode the sampled one and its partner only.
    let involved: Vec<i64> = match call.partner {
        Some(partner) => vec![call.sample_idx, partner],
        None => (0..n_candidates).collect(),
    };
    // Small outputs are kept and reduced together at the end; large ones are reduced as soon as
    // each is computed (see kernel::BATCH_NUMEL_LIMIT).
    let batch = kernel::batchable(grads);
    let mut kept = Vec::new();
    let mut gates = Vec::new();
    for &k in &involved {
        let out = if k == call.sample_idx {
            call.output.tensors.iter().map(|t| t.as_ref().map(Tensor::shallow_clone)).collect()
        } else {
            let out = call_forward_path(&forward_path, k, args, kwargs).map_err(|err| {
                let note = format!(
                    "(raised by {} of {}, evaluated in the binary-gate backward)",
                    ctx.describe_candidate(module, k),
                    ctx.name()
                );
                with_note(py, err, note)
            })?;
            candidate_output(ctx, module, call, k, &out, grads)?
        };
        if batch {
            kept.push(out);
        } else {
            gates.push(kernel::binary_gate_grad(&out, grads).map_err(&in_layer)?);
        }
    }
    let gate_grads =
        if batch { kernel::binary_gate_grads(&kept, grads) } else { kernel::stack_gate_grads(gates, grads) }
            .and_then(|b| if b.kind() == options.0 { Ok(b) } else { b.f_to_kind(options.0) })
            .and_then(|b| if b.device() == options.1 { Ok(b) } else { b.f_to_device(options.1) })
            .map_err(&in_layer)?;

    // The softmax runs after the candidates, as in NNI, so a stochastic one (GumbelSoftmax)
    // draws the same random numbers.
    let probs = match call.partner {
        Some(_) => ctx.probs_of(py, &ctx.alpha_at(py, &involved)?)?,
        None => ctx.probs(py)?,
    };
    let mut alpha_grad = alpha.grad();
    if !alpha_grad.defined() {
        alpha_grad = alpha.f_zeros_like().map_err(&in_layer)?;
        alpha_obj.setattr(intern!(py, "grad"), tree::to_python(py, &alpha_grad)?)?;
    }
    match call.partner {
        Some(_) => kernel::accumulate_subset_alpha_grad(&mut alpha_grad, &involved, &probs, &gate_grads),
        None => kernel::accumulate_alpha_grad(&mut alpha_grad, &probs, &gate_grads),
    }
    .map_err(&in_layer)?;
    arch.run_after_backward(py)
}

/// Whether the running backward keeps its graph (`retain_graph=True`): then this call may be
/// back-propagated again and keeps its saved state; otherwise the state is freed right away.
fn backward_keeps_graph(py: Python<'_>) -> bool {
    static KEEP_GRAPH: GILOnceCell<Option<PyObject>> = GILOnceCell::new();
    let query = KEEP_GRAPH.get_or_init(py, || {
        py.import("torch._C._autograd")
            .and_then(|m| m.getattr("_get_current_graph_task_keep_graph"))
            .map(Bound::unbind)
            .ok()
    });
    match query {
        Some(query) => query.call0(py).and_then(|keep| keep.extract::<bool>(py)).unwrap_or(true),
        // Without the query (older torch), keep the state: it is freed with the graph.
        None => true,
    }
}

/// The gradient hook on one call's output tensors (see [`attach`]): it owns that call's saved
/// forward and lives in the autograd graph only, so it is released with the graph.
#[pyclass(frozen, module = "proxyless_rs._core")]
pub struct OutputGradHook {
    ctx: Py<ProxylessContext>,
    module: PyObject,
    /// Positions in the layer's output of the hooked tensors, in hook-argument order.
    positions: Vec<usize>,
    n_outputs: usize,
    call: Mutex<Option<SavedCall>>,
}

#[pymethods]
impl OutputGradHook {
    /// Called by autograd with the gradient of the hooked tensor, or (several hooked tensors,
    /// through the gradient tap) with the tuple of their gradients.
    fn __call__(&self, grads: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = grads.py();
        let ctx = self.ctx.get();
        let hooked = tree::optional_tensors(grads)?;
        let mut all: Vec<Option<Tensor>> = (0..self.n_outputs).map(|_| None).collect();
        for (position, grad) in self.positions.iter().zip(hooked) {
            all[*position] = grad;
        }
        // Taken out for the run (which calls Python code) rather than run under the lock.
        let taken = self.call.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let Some(call) = taken else {
            return Err(PyRuntimeError::new_err(format!(
                "{}: backward reached this call of the layer a second time, but the first backward freed its saved \
                 forward; to back-propagate twice through a graph, run the first backward with retain_graph=True",
                ctx.name()
            )));
        };
        let result = run_backward(ctx, self.module.bind(py), &call, &all);
        if backward_keeps_graph(py) {
            *self.call.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(call);
        }
        result
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.ctx)?;
        visit.call(&self.module)?;
        if let Ok(slot) = self.call.try_lock() {
            if let Some(call) = slot.as_ref() {
                visit.call(&call.args)?;
                if let Some(kwargs) = &call.kwargs {
                    visit.call(kwargs)?;
                }
            }
        }
        Ok(())
    }
}

/// The identity autograd Function that hands all its outputs' gradients to one hook at once
/// (`GradientTap.apply(hook, *tensors)`), built once from Rust functions so that the core needs
/// nothing from the Python package above it. A plain tensor hook sees one gradient at a time, and
/// `torch.autograd.graph.register_multi_grad_hook` keeps the graph in a reference cycle (its
/// closures hold the grad_fns) until the garbage collector runs. Its outputs are views of its
/// inputs made inside a custom Function, so autograd refuses in-place ops on them (as it does on
/// the outputs of NNI's module full backward hook).
fn gradient_tap(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static TAP: GILOnceCell<PyObject> = GILOnceCell::new();
    let tap = TAP.get_or_try_init(py, || -> PyResult<PyObject> {
        let function = py.import("torch.autograd")?.getattr("Function")?;
        let staticmethod = py.import("builtins")?.getattr("staticmethod")?;
        let namespace = PyDict::new(py);
        namespace.set_item("forward", staticmethod.call1((wrap_pyfunction!(tap_forward, py)?,))?)?;
        namespace.set_item("backward", staticmethod.call1((wrap_pyfunction!(tap_backward, py)?,))?)?;
        namespace.set_item("__module__", "proxyless_rs._core")?;
        namespace.set_item("__doc__", "Identity on tensors; backward hands all their gradients to one hook.")?;
        Ok(function.get_type().call1(("GradientTap", (function,), namespace))?.unbind())
    })?;
    Ok(tap.bind(py))
}

#[pyfunction]
#[pyo3(signature = (ctx, hook, *tensors))]
fn tap_forward<'py>(
    ctx: &Bound<'py, PyAny>,
    hook: &Bound<'py, PyAny>,
    tensors: Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyTuple>> {
    let py = ctx.py();
    ctx.setattr(intern!(py, "hook"), hook)?;
    // Unused outputs give None, as in a full backward hook, not zeros.
    ctx.call_method1(intern!(py, "set_materialize_grads"), (false,))?;
    Ok(tensors)
}

#[pyfunction]
#[pyo3(signature = (ctx, *grads))]
fn tap_backward<'py>(ctx: &Bound<'py, PyAny>, grads: Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyTuple>> {
    let py = ctx.py();
    ctx.getattr(intern!(py, "hook"))?.call1((&grads,))?;
    let mut passed = vec![py.None().into_bound(py)];
    passed.extend(grads.iter());
    PyTuple::new(py, passed)
}

/// Whether a hook on `item` (`tensor`) could see more than this call's output gradient: a leaf
/// (a parameter), one of the layer's inputs, or a view (an in-place op on a view replaces the
/// node its hooks sit on).
fn reachable_otherwise(item: &Bound<'_, PyAny>, tensor: &Tensor, input_ids: &[usize]) -> PyResult<bool> {
    if tensor.is_leaf() || input_ids.contains(&(item.as_ptr() as usize)) {
        return Ok(true);
    }
    item.call_method0(intern!(item.py(), "_is_view"))?.extract()
}

/// Hooks the tensors of `layer_output` that require grad so that backward through them runs the
/// binary-gate backward of this call, hands the hook the call's saved state, and returns what
/// the layer's forward should return.
///
/// A single output tensor gets a tensor hook (a few microseconds; a module full backward hook,
/// the mechanism NNI uses, wraps inputs and outputs in a Python autograd Function, ~80 us a
/// call). The hook must see exactly the gradient of this call's output, so a tensor that is also
/// reachable another way (see [`reachable_otherwise`]: an identity candidate or a mixed input
/// returns one of the inputs) is returned as a copy of itself, with a node of its own; an in-place
/// op on that copy then leaves the saved values alone, and the hook still sees the gradient of
/// the values the layer computed. An in-place op on any other hooked output is refused in the
/// backward (the saved output is an alias of it). Several output tensors go through one identity
/// autograd Function (see [`gradient_tap`]), so that the hook gets all their gradients at once.
pub fn attach(
    ctx: &Bound<'_, ProxylessContext>,
    module: &Bound<'_, PyAny>,
    layer_output: &Bound<'_, PyAny>,
    output: tree::OutputTensors,
    mut call: SavedCall,
    input_ids: &[usize],
) -> PyResult<PyObject> {
    let py = module.py();
    let positions: Vec<usize> =
        (0..output.tensors.len()).filter(|&i| output.tensors[i].as_ref().is_some_and(Tensor::requires_grad)).collect();
    let in_layer = in_context(ctx.get().name());
    let mut saved = Vec::with_capacity(output.tensors.len());
    for (i, tensor) in output.tensors.iter().enumerate() {
        let Some(tensor) = tensor else {
            saved.push(None);
            continue;
        };
        let detached = tensor.f_detach().map_err(&in_layer)?;
        if positions.contains(&i) {
            let alias = tree::to_python(py, &detached)?;
            let version = tree::version(alias.bind(py))?;
            call.watched.push(Watched { tensor: alias, version, output_element: Some(i) });
        }
        saved.push(Some(detached));
    }
    call.output = tree::OutputTensors { tensors: saved, others: output.others, keys: output.keys };
    let parts =
        tree::output_parts(layer_output)?.ok_or_else(|| PyTypeError::new_err("the output was checked at save"))?;
    let hook = Py::new(
        py,
        OutputGradHook {
            ctx: ctx.clone().unbind(),
            module: module.clone().unbind(),
            positions: positions.clone(),
            n_outputs: output.tensors.len(),
            call: Mutex::new(Some(call)),
        },
    )?;
    if let [position] = positions.as_slice() {
        let item = &parts.items[*position];
        let tensor = output.tensors[*position].as_ref().expect("a hooked position holds a tensor");
        let copied = reachable_otherwise(item, tensor, input_ids)?;
        let hooked = if copied { item.call_method0(intern!(py, "clone"))? } else { item.clone() };
        hooked.call_method1(intern!(py, "register_hook"), (hook,))?;
        if !copied {
            return Ok(layer_output.clone().unbind());
        }
        return replace_items(layer_output, parts, &[*position], vec![hooked.unbind()]);
    }
    let mut tap_args = vec![hook.into_any()];
    tap_args.extend(positions.iter().map(|&i| parts.items[i].clone().unbind()));
    let tapped = gradient_tap(py)?.call_method1(intern!(py, "apply"), PyTuple::new(py, tap_args)?)?;
    let views = tapped.try_iter()?.map(|view| view.map(Bound::unbind)).collect::<PyResult<Vec<_>>>()?;
    replace_items(layer_output, parts, &positions, views)
}

/// `layer_output` with the elements at `positions` replaced (a tensor output is replaced whole),
/// rebuilt as its own type: a dict (or dict subclass) keeps its keys and their order, a namedtuple
/// stays that namedtuple, a list a list.
fn replace_items(
    layer_output: &Bound<'_, PyAny>,
    parts: tree::OutputParts<'_>,
    positions: &[usize],
    replacements: Vec<PyObject>,
) -> PyResult<PyObject> {
    if tree::as_tensor(layer_output)?.is_some() {
        return Ok(replacements.into_iter().next().expect("a hooked tensor output has one replacement"));
    }
    if let (Some(keys), Ok(dict)) = (&parts.keys, layer_output.downcast::<PyDict>()) {
        let replaced = tree::copy_dict(dict)?;
        for (&position, replacement) in positions.iter().zip(replacements) {
            replaced.set_item(&keys[position], replacement)?;
        }
        return Ok(replaced.into_any().unbind());
    }
    let mut items: Vec<PyObject> = parts.items.into_iter().map(Bound::unbind).collect();
    for (&position, replacement) in positions.iter().zip(replacements) {
        items[position] = replacement;
    }
    Ok(tree::rebuild_sequence(layer_output, items)?.unbind())
}
