//! The binary-gate backward that turns a mixed layer's output gradient into alpha's gradient, run
//! by the autograd node that each call's output passes through (the gradient tap), which takes
//! alpha as an input and owns that call's saved forward.
//!
//! Alpha is an input of that node, as of any op that uses a parameter, so autograd decides when
//! its gradient is computed and where it goes: only when the running backward needs it (not under
//! `torch.autograd.grad` for other inputs, not when alpha does not require grad: then not one extra
//! candidate forward runs), accumulated by autograd (alpha's hooks fire, DDP's reducer sees it), and
//! into whichever tensor was the layer's alpha at forward (`torch.func.functional_call`).

use std::sync::Mutex;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyTuple};
use tch::Tensor;

use crate::context::{LiveCall, ProxylessContext};
use crate::errors::in_context;
use crate::torch_private::{backward_keeps_graph, engine_will_execute};
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
    /// The layer's alpha at forward (what the gradient tap took as its input): the probabilities
    /// of the backward are its softmax, and autograd hands it the gradient.
    alpha: PyObject,
    watched: Vec<Watched>,
    _live: LiveCall,
}

impl SavedCall {
    pub fn new(
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
        sample_idx: i64,
        partner: Option<i64>,
        alpha: PyObject,
        watched: Vec<Watched>,
        live: LiveCall,
    ) -> Self {
        let output = tree::OutputTensors { tensors: Vec::new(), others: Vec::new(), keys: None };
        Self { args, kwargs, output, sample_idx, partner, alpha, watched, _live: live }
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

/// Says where an exception raised by a candidate came from: a note (Python 3.11+), or, where
/// exceptions have no notes (3.9, 3.10), the same text appended to a one-string message.
fn with_note(py: Python<'_>, err: PyErr, note: String) -> PyErr {
    let value = err.value(py);
    if value.hasattr(intern!(py, "add_note")).unwrap_or(false)
        && value.call_method1(intern!(py, "add_note"), (&note,)).is_ok()
    {
        return err;
    }
    if let Ok(args) = value.getattr(intern!(py, "args")).and_then(|args| args.extract::<(String,)>()) {
        let extended = PyTuple::new(py, [format!("{}\n{note}", args.0)]);
        if extended.and_then(|args| value.setattr(intern!(py, "args"), args)).is_ok() {
            return err;
        }
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

/// The binary-gate gradient of alpha for one call.
///
/// `grads` holds one entry per output element of the layer (`None` where no gradient flowed).
/// The other candidates are evaluated on the saved inputs through `module.forward_path` (under
/// `no_grad`, in index order, so random ops draw what NNI's hook draws), each gate's gradient is
/// `sum(out_k * grad_output)`, and the closed form gives alpha's gradient, in alpha's dtype and on
/// its device: no host round trip. Autograd adds it into `alpha.grad`, so gradients from other
/// losses on alpha add up.
fn run_backward(
    ctx: &ProxylessContext,
    module: &Bound<'_, PyAny>,
    call: &SavedCall,
    grads: &[Option<Tensor>],
) -> PyResult<Tensor> {
    let py = module.py();
    check_versions(ctx, py, call)?;
    let alpha = tree::expect_tensor(call.alpha.bind(py), "arch_alpha")?;
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
    let delta = match call.partner {
        Some(_) => {
            let probs = ctx.probs_of(py, &kernel::gather(&alpha, &involved).map_err(&in_layer)?)?;
            kernel::subset_alpha_grad_like(&alpha, &involved, &probs, &gate_grads)
        }
        None => kernel::alpha_grad_like(&alpha, &ctx.probs_of(py, &alpha)?, &gate_grads),
    }
    .map_err(&in_layer)?;
    ctx.arch(py).get().run_after_backward(py)?;
    Ok(delta)
}

/// The backward of one call (see [`attach`]): it owns that call's saved forward and lives in the
/// autograd graph only (in the gradient tap's node), so it is released with the graph.
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
    /// Called by the gradient tap's backward with the tuple of the tapped tensors' gradients;
    /// returns alpha's gradient, or None when `alpha_needed` is false (the running backward does
    /// not compute alpha's gradient: nothing is evaluated).
    fn __call__(&self, grads: &Bound<'_, PyAny>, alpha_needed: bool) -> PyResult<PyObject> {
        let py = grads.py();
        let ctx = self.ctx.get();
        let hooked = tree::optional_tensors(grads)?;
        let mut all: Vec<Option<Tensor>> = (0..self.n_outputs).map(|_| None).collect();
        for (position, grad) in self.positions.iter().zip(hooked) {
            all[*position] = grad;
        }
        let keep = backward_keeps_graph(py)?;
        // Taken out for the run (which calls Python code) rather than run under the lock.
        let taken = self.call.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let Some(call) = taken else {
            if !alpha_needed {
                return Ok(py.None());
            }
            return Err(PyRuntimeError::new_err(format!(
                "{}: backward reached this call of the layer a second time, but the first backward freed its saved \
                 forward; to back-propagate twice through a graph, run the first backward with retain_graph=True",
                ctx.name()
            )));
        };
        let result = if !alpha_needed {
            Ok(py.None())
        } else if crate::context::grad_mode_enabled() {
            // In a backward, grad mode is on exactly when it runs with create_graph=True.
            Err(PyRuntimeError::new_err(format!(
                "{}: proxyless_rs computes alpha's binary-gate gradient outside autograd's graph, so it cannot be \
                 differentiated again (a backward with create_graph=True that reaches alpha); take the gradient of \
                 the inputs or weights only, or leave create_graph off",
                ctx.name()
            )))
        } else {
            run_backward(ctx, self.module.bind(py), &call, &all).and_then(|delta| tree::to_python(py, &delta))
        };
        if keep {
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

/// The autograd Function every hooked call's output passes through
/// (`GradientTap.apply(hook, alpha, *tensors)`): identity on the tensors, and alpha's gradient from
/// the call's binary-gate backward. Built once from Rust functions, so that the core needs nothing
/// from the Python package above it. Its outputs are aliases of its inputs (detached, so not
/// views: an in-place op on them is allowed, and caught by the version check if it changes values
/// the backward needs).
fn gradient_tap(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static TAP: GILOnceCell<PyObject> = GILOnceCell::new();
    let tap = TAP.get_or_try_init(py, || -> PyResult<PyObject> {
        let function = py.import("torch.autograd")?.getattr("Function")?;
        let staticmethod = py.import("builtins")?.getattr("staticmethod")?;
        let namespace = PyDict::new(py);
        namespace.set_item("forward", staticmethod.call1((wrap_pyfunction!(tap_forward, py)?,))?)?;
        namespace.set_item("backward", staticmethod.call1((wrap_pyfunction!(tap_backward, py)?,))?)?;
        namespace.set_item("__module__", "proxyless_rs._core")?;
        namespace.set_item(
            "__doc__",
            "Identity on a mixed layer's output tensors; its backward gives alpha the binary-gate gradient.",
        )?;
        Ok(function.get_type().call1(("GradientTap", (function,), namespace))?.unbind())
    })?;
    Ok(tap.bind(py))
}

#[pyfunction]
#[pyo3(signature = (ctx, hook, _alpha, *tensors))]
fn tap_forward<'py>(
    ctx: &Bound<'py, PyAny>,
    hook: &Bound<'py, PyAny>,
    _alpha: &Bound<'py, PyAny>,
    tensors: Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyTuple>> {
    let py = ctx.py();
    ctx.setattr(intern!(py, "hook"), hook)?;
    // Unused outputs give None, as in a full backward hook, not zeros.
    ctx.call_method1(intern!(py, "set_materialize_grads"), (false,))?;
    let aliases = tensors.iter().map(|t| t.call_method0(intern!(py, "detach"))).collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, aliases)
}

#[pyfunction]
#[pyo3(signature = (ctx, *grads))]
fn tap_backward<'py>(ctx: &Bound<'py, PyAny>, grads: Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyTuple>> {
    let py = ctx.py();
    // Alpha gets a gradient only where it requires one and this backward reaches it. Its view is
    // input 1 of `apply`, and the first tensor input: `next_functions` lists the tensor inputs only.
    let needs: bool = ctx.getattr(intern!(py, "needs_input_grad"))?.get_item(1)?.extract()?;
    let alpha_needed =
        needs && engine_will_execute(&ctx.getattr(intern!(py, "next_functions"))?.get_item(0)?.get_item(0)?)?;
    let alpha_grad = ctx.getattr(intern!(py, "hook"))?.call1((&grads, alpha_needed))?;
    let mut passed = vec![py.None().into_bound(py), alpha_grad];
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

/// Passes the floating-point tensors of `layer_output` through the gradient tap, with `alpha`,
/// so that backward through them runs the binary-gate backward of this call; hands the tap's hook
/// the call's saved state, and returns what the layer's forward should return.
///
/// Every floating-point output tensor is tapped, whether or not it requires grad: alpha does, so
/// the output carries alpha's gradient path whatever the input and the weights require. The tap
/// must see exactly the gradient of this call's output, so a tensor that is also reachable another
/// way (see [`reachable_otherwise`]: an identity candidate or a mixed input returns one of the
/// inputs) enters it as a copy of itself; an in-place op on what the layer returns then leaves the
/// saved values alone. An in-place op on any other tapped output is refused in the backward (the
/// saved output is an alias of it).
pub fn attach(
    ctx: &Bound<'_, ProxylessContext>,
    module: &Bound<'_, PyAny>,
    layer_output: &Bound<'_, PyAny>,
    output: tree::OutputTensors,
    mut call: SavedCall,
    input_ids: &[usize],
) -> PyResult<PyObject> {
    let py = module.py();
    let positions: Vec<usize> = (0..output.tensors.len())
        .filter(|&i| output.tensors[i].as_ref().is_some_and(Tensor::is_floating_point))
        .collect();
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
    // A view of alpha, not alpha itself, enters the tap: its backward node is an inner one, which
    // autograd can say whether it will execute under `torch.autograd.grad` (for a leaf's
    // accumulator it refuses to, when the leaf is one of the inputs).
    let alpha = {
        let alpha = tree::expect_tensor(call.alpha.bind(py), "arch_alpha")?;
        tree::to_python(py, &alpha.f_view_as(&alpha).map_err(&in_layer)?)?
    };
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
    let mut tap_args = vec![hook.into_any(), alpha];
    for &position in &positions {
        let item = &parts.items[position];
        let tensor = output.tensors[position].as_ref().expect("a tapped position holds a tensor");
        let copied = reachable_otherwise(item, tensor, input_ids)?;
        tap_args.push(if copied { item.call_method0(intern!(py, "clone"))?.unbind() } else { item.clone().unbind() });
    }
    let tapped = gradient_tap(py)?.call_method1(intern!(py, "apply"), PyTuple::new(py, tap_args)?)?;
    let outs = tapped.try_iter()?.map(|out| out.map(Bound::unbind)).collect::<PyResult<Vec<_>>>()?;
    replace_items(layer_output, parts, &positions, outs)
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
