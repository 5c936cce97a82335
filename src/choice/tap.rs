//! The gradient tap: the autograd node each tapped call's output passes through, which takes
//! alpha as an input and owns that call's saved forward; its backward runs the call's binary-gate
//! backward (`gate.rs`).
//!
//! Alpha is an input of that node, as of any op that uses a parameter, so autograd decides when
//! its gradient is computed and where it goes: only when the running backward needs it (not under
//! `torch.autograd.grad` for other inputs, not when alpha does not require grad: then not one extra
//! candidate forward runs), accumulated by autograd (alpha's hooks fire, DDP's reducer sees it), and
//! into whichever tensor was the layer's alpha at forward (`torch.func.functional_call`).

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyTuple};
use tch::Tensor;

use crate::choice::saved_call::SavedCall;
use crate::choice::Choice;
use crate::errors::in_context;
use crate::interop::autograd_state::{
    at_backward_end, backward_keeps_graph, engine_will_execute, grad_mode_enabled, keep_graph_known,
};
use crate::{choice::gate, interop::tree};

/// The backward of one call (see [`tap`]): it owns that call's saved forward and lives in the
/// autograd graph only (in the gradient tap's node), so it is released with the graph.
#[pyclass(frozen, module = "proxyless_rs._core")]
pub struct TapBackward {
    /// Shared with the layer's context, which owns (and lets the garbage collector see) what it
    /// holds; the module below keeps that context alive.
    choice: Arc<Choice>,
    /// The choice's alternatives as the core calls them (see `module_call::call_alternative`).
    alternatives: PyObject,
    call: Mutex<Option<SavedCall>>,
}

#[pymethods]
impl TapBackward {
    /// Called by the gradient tap's backward with the tuple of the tapped tensors' gradients;
    /// returns alpha's gradient, or None when `alpha_needed` is false (the running backward does
    /// not compute alpha's gradient: nothing is evaluated).
    fn __call__(&self, grads: &Bound<'_, PyAny>, alpha_needed: bool) -> PyResult<PyObject> {
        let py = grads.py();
        // Where torch cannot say, the call is kept for now and released at the end of the backward
        // if autograd freed the graph (`release_if_freed`).
        let keep = backward_keeps_graph(py)?.unwrap_or(true);
        // Taken out for the run (which calls Python code) rather than run under the lock.
        let taken = self.call.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let Some(call) = taken else {
            if !alpha_needed {
                return Ok(py.None());
            }
            return Err(PyRuntimeError::new_err(format!(
                "{}: backward reached this call of the layer a second time, but the first backward freed its saved \
                 forward; to back-propagate twice through a graph, run the first backward with retain_graph=True",
                self.choice.name
            )));
        };
        let result = if !alpha_needed {
            Ok(py.None())
        } else if grad_mode_enabled() {
            // In a backward, grad mode is on exactly when it runs with create_graph=True.
            Err(PyRuntimeError::new_err(format!(
                "{}: proxyless_rs computes alpha's binary-gate gradient outside autograd's graph, so it cannot be \
                 differentiated again (a backward with create_graph=True that reaches alpha); take the gradient of \
                 the inputs or weights only, or leave create_graph off",
                self.choice.name
            )))
        } else {
            let mut all: Vec<Option<Tensor>> = (0..call.output().tensors.len()).map(|_| None).collect();
            tree::optional_tensors(grads)
                .map(|tapped| {
                    for (position, grad) in call.tapped().iter().zip(tapped) {
                        all[*position] = grad;
                    }
                })
                .and_then(|()| gate::backward(&self.choice, self.alternatives.bind(py), &call, &all))
                .and_then(|delta| tree::to_python(py, &delta))
        };
        if keep {
            *self.call.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(call);
        }
        result
    }

    /// Frees the call's saved state (a backward freed the graph it belongs to).
    fn release(&self) {
        drop(self.call.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take());
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.alternatives)?;
        if let Ok(slot) = self.call.try_lock() {
            if let Some(call) = slot.as_ref() {
                call.traverse(&visit)?;
            }
        }
        Ok(())
    }
}

/// The autograd Function every tapped call's output passes through
/// (`GradientTap.apply(backward, alpha, *tensors)`): identity on the tensors, and alpha's gradient from
/// the call's binary-gate backward. Built once from Rust functions, so that the core needs nothing
/// from the Python package above it. Its outputs are aliases of its inputs (detached, so not
/// views: an in-place op on them is allowed, and caught by the version check if it changes values
/// the backward needs).
struct GradientTap {
    class: PyObject,
    /// Where `Function.apply` is a Python method (torch 2.0 to 2.14), what it does when no
    /// functorch transform is active, done from here: unwrap dead functorch wrappers, then
    /// `torch._C._FunctionBase.apply` bound to the class. That spares a Python frame, a closure
    /// and a generator on every forward (about 1.3 us of the layer's overhead). Where
    /// `Function.apply` is that C method itself (torch 2.15) or a part is missing, `None`: the
    /// class's own `apply` runs.
    python_apply: Option<PythonApply>,
}

struct PythonApply {
    direct_apply: PyObject,
    transforms_active: PyObject,
    unwrap_if_dead: PyObject,
}

impl PythonApply {
    fn find(py: Python<'_>, function: &Bound<'_, PyAny>, class: &Bound<'_, PyAny>) -> PyResult<Option<Self>> {
        let c_apply = py.import("torch._C")?.getattr("_FunctionBase")?.getattr("__dict__")?.get_item("apply")?;
        if function.getattr("__dict__")?.get_item("apply")?.is(&c_apply) {
            return Ok(None);
        }
        let (Ok(transforms_active), Ok(unwrap_if_dead)) = (
            py.import("torch._C")?.getattr("_are_functorch_transforms_active"),
            py.import("torch._functorch.utils").and_then(|utils| utils.getattr("unwrap_if_dead")),
        ) else {
            return Ok(None);
        };
        Ok(Some(Self {
            direct_apply: c_apply.call_method1("__get__", (py.None(), class))?.unbind(),
            transforms_active: transforms_active.unbind(),
            unwrap_if_dead: unwrap_if_dead.unbind(),
        }))
    }
}

impl GradientTap {
    fn get(py: Python<'_>) -> PyResult<&GradientTap> {
        static TAP: GILOnceCell<GradientTap> = GILOnceCell::new();
        TAP.get_or_try_init(py, || -> PyResult<GradientTap> {
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
            let class = function.get_type().call1(("GradientTap", (&function,), namespace))?;
            let python_apply = PythonApply::find(py, &function, &class)?;
            Ok(GradientTap { class: class.unbind(), python_apply })
        })
    }

    /// `GradientTap.apply(backward, *tensors)`.
    fn apply<'py>(&self, py: Python<'py>, backward: PyObject, tensors: Vec<PyObject>) -> PyResult<Bound<'py, PyAny>> {
        let mut args = vec![backward];
        match &self.python_apply {
            Some(fast) if !fast.transforms_active.call0(py)?.extract::<bool>(py)? => {
                let unwrap = fast.unwrap_if_dead.bind(py);
                for tensor in tensors {
                    args.push(unwrap.call1((tensor,))?.unbind());
                }
                fast.direct_apply.bind(py).call1(PyTuple::new(py, args)?)
            }
            _ => {
                args.extend(tensors);
                self.class.bind(py).call_method1(intern!(py, "apply"), PyTuple::new(py, args)?)
            }
        }
    }
}

#[pyfunction]
#[pyo3(signature = (ctx, backward, _alpha, *tensors))]
fn tap_forward<'py>(
    ctx: &Bound<'py, PyAny>,
    backward: &Bound<'py, PyAny>,
    _alpha: &Bound<'py, PyAny>,
    tensors: Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyTuple>> {
    let py = ctx.py();
    ctx.setattr(intern!(py, "call_backward"), backward)?;
    // Where torch cannot say whether a backward keeps the graph, a tensor saved for autograd to free
    // with it: whether it was freed says it (`release_if_freed`).
    if !keep_graph_known(py) {
        ctx.call_method1(intern!(py, "save_for_backward"), (_alpha,))?;
    }
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
    let call_backward = ctx.getattr(intern!(py, "call_backward"))?;
    let alpha_grad = call_backward.call1((&grads, alpha_needed))?;
    if backward_keeps_graph(py)?.is_none() {
        let partial = py.import("functools")?.getattr("partial")?;
        at_backward_end(py, partial.call1((wrap_pyfunction!(release_if_freed, py)?, ctx))?)?;
    }
    let mut passed = vec![py.None().into_bound(py), alpha_grad];
    passed.extend(grads.iter());
    PyTuple::new(py, passed)
}

/// At the end of a backward, where torch cannot say whether it keeps its graph: frees the call's
/// saved state if autograd freed the tap node's saved tensors (a backward without
/// `retain_graph=True`), as `backward_keeps_graph` lets the backward itself do elsewhere.
#[pyfunction]
fn release_if_freed(ctx: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = ctx.py();
    if ctx.getattr(intern!(py, "saved_tensors")).is_err() {
        ctx.getattr(intern!(py, "call_backward"))?.call_method0(intern!(py, "release"))?;
    }
    Ok(())
}

/// Whether a hook on `item` could see more than this call's output gradient: a leaf (a
/// parameter), one of the layer's inputs, or a view (an in-place op on a view replaces the node
/// its hooks sit on).
fn reachable_otherwise(item: &Bound<'_, PyAny>, tensor: &Tensor, call: &SavedCall) -> PyResult<bool> {
    if tensor.is_leaf() || call.input().holds(item) {
        return Ok(true);
    }
    item.call_method0(intern!(item.py(), "_is_view"))?.extract()
}

/// Passes the floating-point tensors of `layer_output` (taken apart as `parts` and `output`)
/// through the gradient tap, with the call's alpha, so that backward through them runs the
/// binary-gate backward of `call`, which the tap's node then owns; returns what the layer's
/// forward should return.
///
/// Every floating-point output tensor is tapped, whether or not it requires grad: alpha does, so
/// the output carries alpha's gradient path whatever the input and the weights require. The tap
/// must see exactly the gradient of this call's output, so a tensor that is also reachable another
/// way (see [`reachable_otherwise`]: an identity candidate or a mixed input returns one of the
/// inputs) enters it as a copy of itself; an in-place op on what the layer returns then leaves the
/// saved values alone. An in-place op on any other tapped output is refused in the backward (the
/// saved output is an alias of it).
pub fn tap(
    choice: &Arc<Choice>,
    alternatives: &Bound<'_, PyAny>,
    layer_output: &Bound<'_, PyAny>,
    parts: tree::OutputParts<'_>,
    output: &tree::OutputTensors,
    call: SavedCall,
) -> PyResult<PyObject> {
    let py = alternatives.py();
    let positions = call.tapped().to_vec();
    // A view of alpha, not alpha itself, enters the tap: its backward node is an inner one, which
    // autograd can say whether it will execute under `torch.autograd.grad` (for a leaf's
    // accumulator it refuses to, when the leaf is one of the inputs).
    let alpha = {
        let alpha = tree::expect_tensor(call.alpha(py), "arch_alpha")?;
        tree::to_python(py, &alpha.f_view_as(&alpha).map_err(in_context(&choice.name))?)?
    };
    let mut tap_args = vec![alpha];
    for &position in &positions {
        let item = &parts.items[position];
        let tensor = output.tensors[position].as_ref().expect("a tapped position holds a tensor");
        let copied = reachable_otherwise(item, tensor, &call)?;
        tap_args.push(if copied { item.call_method0(intern!(py, "clone"))?.unbind() } else { item.clone().unbind() });
    }
    let backward = Py::new(
        py,
        TapBackward {
            choice: choice.clone(),
            alternatives: alternatives.clone().unbind(),
            call: Mutex::new(Some(call)),
        },
    )?;
    let tapped = GradientTap::get(py)?.apply(py, backward.into_any(), tap_args)?;
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
        return Ok(replacements.into_iter().next().expect("a tapped tensor output has one replacement"));
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
