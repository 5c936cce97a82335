//! The binary-gate backward that turns a mixed layer's output gradient into `arch_alpha.grad`,
//! and the two hooks that run it: on the layer's output tensors, or as a module full backward hook.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::intern;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3_tch::wrap_tch_err;
use tch::{TchError, Tensor};

use crate::context::ProxylessContext;
use crate::{kernel, tree};

/// The binary-gate backward in the form of a module full backward hook
/// (`module.register_full_backward_hook(ctx.backward_hook)`, as NNI 2.10 registers it).
///
/// proxyless-rs's layers use the cheaper [`OutputGradHook`] on their outputs instead; both
/// run [`run_backward`].
///
/// On each backward through the layer it pops the matching saved forward, evaluates every
/// other candidate on the saved inputs through `module.forward_path` (under `no_grad`, in
/// index order, so random ops draw what NNI's hook draws), takes each binary gate's gradient
/// `sum(out_k * grad_output)` and adds the closed-form alpha gradient into `arch_alpha.grad`
/// in place: it is created if missing and never replaced, so gradients from other losses on
/// alpha add up. Everything stays on alpha's device: no host round trip.
#[pyclass(frozen, module = "proxyless_rs._core")]
pub struct BackwardHook {
    ctx: Py<ProxylessContext>,
}

impl BackwardHook {
    pub fn new(ctx: Py<ProxylessContext>) -> Self {
        Self { ctx }
    }
}

fn in_layer(ctx: &ProxylessContext) -> impl Fn(TchError) -> PyErr + '_ {
    move |err| PyValueError::new_err(format!("{}: {}", ctx.describe(), tch_message(&err)))
}

/// A dict output's keys as Python prints a list of them, or "no dict".
fn describe_keys(keys: &Option<Vec<String>>) -> String {
    match keys {
        Some(keys) => format!("keys [{}]", keys.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")),
        None => "no dict".to_owned(),
    }
}

fn tch_message(err: &TchError) -> String {
    match err {
        TchError::Shape(msg) | TchError::Torch(msg) => msg.clone(),
        other => other.to_string(),
    }
}

/// `forward_path(k, *args, **kwargs)`. Without kwargs it goes through CPython's vectorcall,
/// which spares the argument tuple that `PyObject_Call` would build for every candidate.
fn call_forward_path<'py>(
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
        let result = pyo3::ffi::PyObject_Vectorcall(forward_path.as_ptr(), argv.as_ptr(), argv.len(), std::ptr::null_mut());
        Bound::from_owned_ptr_or_err(py, result)
    }
}

/// Pops the layer's saved forward and adds the binary-gate gradient into `arch_alpha.grad`.
///
/// `grads` holds one entry per output tensor of the layer (`None` where no gradient flowed).
fn run_backward(ctx: &ProxylessContext, module: &Bound<'_, PyAny>, grads: &[Option<Tensor>]) -> PyResult<()> {
    let py = module.py();
    let saved = ctx.pop().ok_or_else(|| {
        PyRuntimeError::new_err(format!(
            "{}: backward reached the layer but its saved context is empty. Every backward must \
             follow a forward with grad enabled, after the last resample(); was backward run twice \
             (retain_graph=True), or resample() called between forward and backward?",
            ctx.describe()
        ))
    })?;
    let alpha_obj = ctx.arch_alpha.bind(py);
    let alpha = tree::expect_tensor(alpha_obj, "arch_alpha")?;
    let options = (alpha.kind(), alpha.device());
    let n_candidates = alpha.size().first().copied().unwrap_or(0);

    let _no_grad = tch::no_grad_guard();
    let forward_path = module.getattr(intern!(py, "forward_path"))?;
    let args = saved.args.bind(py);
    let kwargs = saved.kwargs.as_ref().map(|kwargs| kwargs.bind(py));
    // Full mode evaluates every candidate; two-path mode the sampled one and its partner only.
    let involved: Vec<i64> = match saved.partner {
        Some(partner) => vec![saved.sample_idx, partner],
        None => (0..n_candidates).collect(),
    };
    // Small outputs are kept and reduced together at the end; large ones are reduced as soon as
    // each is computed (see kernel::BATCH_NUMEL_LIMIT).
    let batch = kernel::batchable(grads);
    let mut kept = Vec::new();
    let mut gates = Vec::new();
    for &k in &involved {
        let out = if k == saved.sample_idx {
            saved.output.iter().map(Tensor::shallow_clone).collect()
        } else {
            let out = call_forward_path(&forward_path, k, args, kwargs)?;
            let (out, keys) = tree::output_tensors(&out, &|| format!("{}: candidate {k}", ctx.describe()))?;
            if keys != saved.output_keys {
                return Err(PyValueError::new_err(format!(
                    "{}: candidate {k} returned {}, but the sampled candidate returned {}; all candidates \
                     must return the same structure",
                    ctx.describe(),
                    describe_keys(&keys),
                    describe_keys(&saved.output_keys)
                )));
            }
            out
        };
        if batch {
            kept.push(out);
        } else {
            gates.push(kernel::binary_gate_grad(&out, grads).map_err(in_layer(ctx))?);
        }
    }
    let gate_grads = if batch { kernel::binary_gate_grads(&kept, grads) } else { kernel::stack_gate_grads(gates, grads) }
        .and_then(|b| if b.kind() == options.0 { Ok(b) } else { b.f_to_kind(options.0) })
        .and_then(|b| if b.device() == options.1 { Ok(b) } else { b.f_to_device(options.1) })
        .map_err(in_layer(ctx))?;

    // The softmax runs after the candidates, as in NNI, so a stochastic one (GumbelSoftmax)
    // draws the same random numbers.
    let probs = match saved.partner {
        Some(_) => ctx.probs_of(py, &ctx.alpha_at(py, &involved)?)?,
        None => ctx.probs(py)?,
    };
    let mut alpha_grad = alpha.grad();
    if !alpha_grad.defined() {
        alpha_grad = alpha.f_zeros_like().map_err(in_layer(ctx))?;
        alpha_obj.setattr(intern!(py, "grad"), tree::to_python(py, &alpha_grad)?)?;
    }
    match saved.partner {
        Some(_) => kernel::accumulate_subset_alpha_grad(&mut alpha_grad, &involved, &probs, &gate_grads),
        None => kernel::accumulate_alpha_grad(&mut alpha_grad, &probs, &gate_grads),
    }
    .map_err(in_layer(ctx))?;
    if let Some(callback) = ctx.after_backward_callback(py) {
        callback.call0(py)?;
    }
    Ok(())
}

#[pymethods]
impl BackwardHook {
    #[new]
    fn py_new(ctx: Py<ProxylessContext>) -> Self {
        Self::new(ctx)
    }

    /// The context this hook pops from.
    #[getter]
    fn ctx(&self, py: Python<'_>) -> Py<ProxylessContext> {
        self.ctx.clone_ref(py)
    }

    fn __call__(
        &self,
        module: &Bound<'_, PyAny>,
        grad_input: &Bound<'_, PyAny>,
        grad_output: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let _ = grad_input; // The inputs' gradients pass through untouched.
        run_backward(self.ctx.get(), module, &tree::optional_tensors(grad_output)?)
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> (Bound<'py, PyAny>, (Py<ProxylessContext>,)) {
        (py.get_type::<Self>().into_any(), (self.ctx.clone_ref(py),))
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.ctx)
    }
}

/// The gradient hook on a layer's output tensors (see [`attach_output_hook`]).
///
/// It lives in the autograd graph only, so it is released with the graph.
#[pyclass(frozen, module = "proxyless_rs._core")]
pub struct OutputGradHook {
    ctx: Py<ProxylessContext>,
    module: PyObject,
    /// Positions in the layer's output of the hooked tensors, in hook-argument order.
    positions: Vec<usize>,
    n_outputs: usize,
}

#[pymethods]
impl OutputGradHook {
    /// Called by autograd with the gradient of the hooked tensor, or (several hooked tensors,
    /// through `proxyless_rs._tap.GradientTap`) with the tuple of their gradients.
    fn __call__(&self, grads: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = grads.py();
        let hooked = tree::optional_tensors(grads)?;
        let mut all: Vec<Option<Tensor>> = (0..self.n_outputs).map(|_| None).collect();
        for (position, grad) in self.positions.iter().zip(hooked) {
            all[*position] = grad;
        }
        run_backward(self.ctx.get(), self.module.bind(py), &all)
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.ctx)?;
        visit.call(&self.module)
    }
}

/// Hooks the tensors of `layer_output` that require grad so that backward through them runs the
/// binary-gate backward of `module`, and returns what the layer's forward should return.
///
/// A single output tensor gets a tensor hook (a few microseconds; a module full backward hook,
/// the mechanism NNI uses, wraps inputs and outputs in a Python autograd Function, ~80 us a
/// call). The hook must see exactly the gradient of this call's output, so a tensor that is
/// also reachable another way (one of the layer's inputs, as from an identity candidate or a
/// mixed input, or a leaf such as a parameter) is first replaced by a view of itself, which
/// gets an autograd node of its own. Several output tensors go through one identity autograd
/// Function (`proxyless_rs._tap.GradientTap`), so that the hook gets all their gradients at once.
pub fn attach_output_hook(
    ctx: &Bound<'_, ProxylessContext>,
    module: &Bound<'_, PyAny>,
    layer_output: &Bound<'_, PyAny>,
    output: &[Tensor],
    inputs: &[usize],
) -> PyResult<PyObject> {
    let py = module.py();
    let positions: Vec<usize> = (0..output.len()).filter(|&i| output[i].requires_grad()).collect();
    let hook = Py::new(
        py,
        OutputGradHook {
            ctx: ctx.clone().unbind(),
            module: module.clone().unbind(),
            positions: positions.clone(),
            n_outputs: output.len(),
        },
    )?;
    let parts = tree::output_parts(layer_output)?.expect("the output was checked at save");
    let keys = parts.keys;
    let items = parts.items;
    if let [position] = positions.as_slice() {
        let (tensor, item) = (&output[*position], &items[*position]);
        let shared = tensor.is_leaf() || inputs.contains(&(item.as_ptr() as usize));
        let hooked = if shared {
            tree::to_python(py, &tensor.f_view_as(tensor).map_err(wrap_tch_err)?)?.into_bound(py)
        } else {
            item.clone()
        };
        hooked.call_method1(intern!(py, "register_hook"), (hook,))?;
        if !shared {
            return Ok(layer_output.clone().unbind());
        }
        return replace_items(layer_output, items, keys, &[*position], vec![hooked.unbind()]);
    }
    let tap = py.import(intern!(py, "proxyless_rs._tap"))?.getattr(intern!(py, "GradientTap"))?;
    let mut tap_args = vec![hook.into_any()];
    tap_args.extend(positions.iter().map(|&i| items[i].clone().unbind()));
    let tapped = tap.call_method1(intern!(py, "apply"), PyTuple::new(py, tap_args)?)?;
    let views = tapped.try_iter()?.map(|view| view.map(Bound::unbind)).collect::<PyResult<Vec<_>>>()?;
    replace_items(layer_output, items, keys, &positions, views)
}

/// `layer_output` with the elements at `positions` replaced (a tensor output is replaced whole);
/// a dict keeps its key order, a list stays a list, any other sequence becomes a tuple.
fn replace_items(
    layer_output: &Bound<'_, PyAny>,
    items: Vec<Bound<'_, PyAny>>,
    keys: Option<Vec<Bound<'_, PyAny>>>,
    positions: &[usize],
    replacements: Vec<PyObject>,
) -> PyResult<PyObject> {
    let py = layer_output.py();
    if tree::as_tensor(layer_output)?.is_some() {
        return Ok(replacements.into_iter().next().expect("a hooked tensor output has one replacement"));
    }
    if let (Some(keys), Ok(dict)) = (keys, layer_output.downcast::<PyDict>()) {
        let replaced = dict.copy()?;
        for (&position, replacement) in positions.iter().zip(replacements) {
            replaced.set_item(&keys[position], replacement)?;
        }
        return Ok(replaced.into_any().unbind());
    }
    let mut items: Vec<PyObject> = items.into_iter().map(Bound::unbind).collect();
    for (&position, replacement) in positions.iter().zip(replacements) {
        items[position] = replacement;
    }
    if layer_output.downcast::<PyList>().is_ok() {
        Ok(PyList::new(py, items)?.into_any().unbind())
    } else {
        Ok(PyTuple::new(py, items)?.into_any().unbind())
    }
}
