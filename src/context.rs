//! The saved-forward stack of a mixed layer.
//!
//! Each forward call that a backward can follow pushes what the backward hook needs: the
//! detached inputs (to evaluate the other candidates), the output's tensors (to reuse the
//! sampled candidate's output) and the sampled index. Backward pops in reverse order,
//! which is the order autograd runs the calls of one layer in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3_tch::{wrap_tch_err, PyTensor};
use tch::{Kind, Tensor};

use crate::hook::BackwardHook;
use crate::tree;

/// What one forward call left for its backward.
pub struct SavedForward {
    pub args: Py<PyTuple>,
    pub kwargs: Option<Py<PyDict>>,
    pub output: Vec<Tensor>,
    /// The keys (as `str`) of a dict output, in the order of `output`.
    pub output_keys: Option<Vec<String>>,
    pub sample_idx: i64,
    /// Two-path mode: the one unsampled candidate whose gate takes part (see `sample_two`).
    pub partner: Option<i64>,
}

/// `dim` if `softmax` is exactly `torch.nn.Softmax` with an explicit `dim`, else `None`.
fn plain_softmax_dim(softmax: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    let py = softmax.py();
    let plain = py.import("torch.nn")?.getattr("Softmax")?;
    if !softmax.get_type().is(&plain) {
        return Ok(None);
    }
    softmax.getattr("dim")?.extract::<Option<i64>>()
}

/// Whether autograd is recording on this thread (the state `torch.no_grad()` switches).
fn grad_mode_enabled() -> bool {
    // libtorch only offers a setter that returns the previous state: set, then restore.
    // SAFETY: plain thread-local flag accesses that cannot fail.
    unsafe {
        let previous = torch_sys::at_grad_set_enabled(1);
        torch_sys::at_grad_set_enabled(previous);
        previous != 0
    }
}

/// The saved-forward stack of one ProxylessNAS mixed layer, with the architecture weights
/// (`arch_alpha`) and the softmax that turns them into path probabilities.
///
/// Unlike NNI 2.10's Python context, nothing is saved when no backward can follow (grad mode
/// off, or no output tensor requires grad), so validation under `torch.no_grad()` leaves
/// nothing behind. Pickling keeps `arch_alpha`, `softmax` and `label` and drops the stack:
/// saved forwards belong to one step.
#[pyclass(frozen, module = "proxyless_rs._core")]
pub struct ProxylessContext {
    #[pyo3(get)]
    pub arch_alpha: PyObject,
    #[pyo3(get)]
    pub softmax: PyObject,
    #[pyo3(get)]
    label: Option<String>,
    /// `Some(dim)` when `softmax` is exactly `torch.nn.Softmax(dim)`: then probabilities are
    /// computed here instead of through a Python module call (a stochastic or custom softmax,
    /// e.g. NNI's GumbelSoftmax, is always called).
    softmax_dim: Option<i64>,
    /// Off inside `proxyless_rs.no_arch_grad()`: forwards save nothing and hook nothing, so the
    /// backward does no binary-gate work (a weight step whose alpha gradients nobody uses).
    enabled: AtomicBool,
    /// Called (no arguments) after each backward has added into `arch_alpha.grad`; used by
    /// `proxyless_rs.distributed` to average architecture gradients across ranks.
    after_backward: Mutex<Option<PyObject>>,
    saved: Mutex<Vec<SavedForward>>,
}

impl ProxylessContext {
    fn stack(&self) -> MutexGuard<'_, Vec<SavedForward>> {
        // A panic cannot happen while the lock is held (only Vec operations run under it),
        // so a poisoned lock still guards a consistent Vec.
        self.saved.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the most recent saved forward, if any.
    pub fn pop(&self) -> Option<SavedForward> {
        self.stack().pop()
    }

    /// `softmax(arch_alpha)`, the path probabilities.
    pub fn probs(&self, py: Python<'_>) -> PyResult<Tensor> {
        self.probs_of(py, &tree::expect_tensor(self.arch_alpha.bind(py), "arch_alpha")?)
    }

    /// `softmax` applied to `logits`: alpha, or two-path mode's two-element slice of it. (Wrapping
    /// alpha back for a Python softmax hands it the same `torch.Tensor` object: torch keeps one
    /// Python object per tensor.)
    pub fn probs_of(&self, py: Python<'_>, logits: &Tensor) -> PyResult<Tensor> {
        match self.softmax_dim {
            Some(dim) => logits.f_softmax(dim, None::<Kind>).map_err(wrap_tch_err),
            None => tree::expect_tensor(&self.softmax.bind(py).call1((tree::to_python(py, logits)?,))?, "softmax(logits)"),
        }
    }

    /// `alpha[indices]`.
    pub fn alpha_at(&self, py: Python<'_>, indices: &[i64]) -> PyResult<Tensor> {
        let alpha = tree::expect_tensor(self.arch_alpha.bind(py), "arch_alpha")?;
        crate::kernel::gather(&alpha, indices).map_err(wrap_tch_err)
    }

    /// Saves one forward call if a backward can follow; if it did, returns the output's tensors
    /// and the identities of the input tensors.
    fn save(
        &self,
        layer_input: &Bound<'_, PyAny>,
        (output, output_keys): tree::OutputTensors,
        sample_idx: i64,
        partner: Option<i64>,
    ) -> PyResult<Option<(Vec<Tensor>, Vec<usize>)>> {
        if !self.enabled.load(Ordering::Relaxed) || !grad_mode_enabled() || !output.iter().any(Tensor::requires_grad) {
            return Ok(None);
        }
        let py = layer_input.py();
        let (args, kwargs) = layer_input
            .extract::<(Bound<'_, PyTuple>, Option<Bound<'_, PyDict>>)>()
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "layer_input must be a tuple (args: tuple, kwargs: dict), got {}",
                    tree::type_name(layer_input)
                ))
            })?;
        let mut inputs = Vec::new();
        let args = tree::detach_tree(args.as_any(), &mut inputs)?.into_bound(py).downcast_into::<PyTuple>()?;
        let kwargs = match kwargs {
            Some(kwargs) if !kwargs.is_empty() => {
                Some(tree::detach_tree(kwargs.as_any(), &mut inputs)?.into_bound(py).downcast_into::<PyDict>()?)
            }
            _ => None,
        };
        let saved_output = output.iter().map(Tensor::detach).collect();
        self.stack().push(SavedForward { args: args.unbind(), kwargs: kwargs.map(Bound::unbind), output: saved_output, output_keys, sample_idx, partner });
        Ok(Some((output, inputs)))
    }

    fn checked_output(&self, layer_output: &Bound<'_, PyAny>, sample_idx: i64) -> PyResult<tree::OutputTensors> {
        tree::output_tensors(layer_output, &|| format!("{}: the sampled candidate (index {sample_idx})", self.describe()))
    }

    /// The `after_backward` callback, if one is set.
    pub fn after_backward_callback(&self, py: Python<'_>) -> Option<PyObject> {
        let slot = self.after_backward.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.as_ref().map(|callback| callback.clone_ref(py))
    }

    /// The label for error messages.
    pub fn describe(&self) -> String {
        match &self.label {
            Some(label) => format!("mixed layer {label:?}"),
            None => "mixed layer".to_owned(),
        }
    }
}

#[pymethods]
impl ProxylessContext {
    #[new]
    #[pyo3(signature = (arch_alpha, softmax, label=None))]
    fn new(arch_alpha: &Bound<'_, PyAny>, softmax: PyObject, label: Option<String>) -> PyResult<Self> {
        let alpha = tree::expect_tensor(arch_alpha, "arch_alpha")?;
        if alpha.dim() != 1 {
            return Err(PyValueError::new_err(format!(
                "arch_alpha must be a 1-d tensor (one logit per candidate), got shape {:?}",
                alpha.size()
            )));
        }
        let softmax_dim = plain_softmax_dim(softmax.bind(arch_alpha.py()))?;
        Ok(Self { arch_alpha: arch_alpha.clone().unbind(), softmax, label, softmax_dim, enabled: AtomicBool::new(true), after_backward: Mutex::new(None), saved: Mutex::new(Vec::new()) })
    }

    /// Saves one forward call for a backward hook registered with
    /// `register_full_backward_hook(ctx.backward_hook)`; `layer_input` is `(args, kwargs)`.
    ///
    /// Returns whether anything was saved. The output must be a tensor or a tuple of
    /// tensors (checked always, so a bad candidate fails at forward, not in backward).
    fn save_forward_context(
        &self,
        layer_input: &Bound<'_, PyAny>,
        layer_output: &Bound<'_, PyAny>,
        layer_sample_idx: i64,
    ) -> PyResult<bool> {
        let output = self.checked_output(layer_output, layer_sample_idx)?;
        Ok(self.save(layer_input, output, layer_sample_idx, None)?.is_some())
    }

    /// Saves one forward call of `module` and returns the output to hand on: when a backward
    /// can follow, its tensors are hooked so that backward runs the binary-gate backward for
    /// `module` (no module-level full backward hook needed). With `partner` (two-path mode) the
    /// backward evaluates only that candidate besides the sampled one.
    #[pyo3(signature = (module, layer_input, layer_output, layer_sample_idx, partner=None))]
    fn forward_output(
        slf: &Bound<'_, Self>,
        module: &Bound<'_, PyAny>,
        layer_input: &Bound<'_, PyAny>,
        layer_output: &Bound<'_, PyAny>,
        layer_sample_idx: i64,
        partner: Option<i64>,
    ) -> PyResult<PyObject> {
        let ctx = slf.get();
        let output = ctx.checked_output(layer_output, layer_sample_idx)?;
        match ctx.save(layer_input, output, layer_sample_idx, partner)? {
            Some((output, inputs)) => crate::hook::attach_output_hook(slf, module, layer_output, &output, &inputs),
            None => Ok(layer_output.clone().unbind()),
        }
    }

    /// Draws a path index from `softmax(arch_alpha)` with `torch.multinomial`'s generator.
    fn sample(&self, py: Python<'_>) -> PyResult<i64> {
        let _no_grad = tch::no_grad_guard();
        crate::sampling::draw(&self.probs(py)?)
    }

    /// Two-path sampling (ProxylessNAS paper, mit-han-lab's `MixedEdge` mode "two"): draws two
    /// distinct candidates from `softmax(arch_alpha)`, then the active one of the two from the
    /// softmax of their two logits. Returns `(active, inactive, a copy of alpha)`; the copy is what
    /// `rescale_two_path` restores around the optimizer step.
    fn sample_two(&self, py: Python<'_>) -> PyResult<(i64, i64, PyTensor)> {
        let _no_grad = tch::no_grad_guard();
        let (first, second) = crate::sampling::draw_pair(&self.probs(py)?)?;
        let pair_logits = self.alpha_at(py, &[first, second])?;
        let (active, inactive) =
            if crate::sampling::draw(&self.probs_of(py, &pair_logits)?)? == 0 { (first, second) } else { (second, first) };
        let before = tree::expect_tensor(self.arch_alpha.bind(py), "arch_alpha")?.f_detach_copy().map_err(wrap_tch_err)?;
        Ok((active, inactive, PyTensor(before)))
    }

    /// Whether forwards are saved for the binary-gate backward (see `no_arch_grad`).
    #[getter]
    fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    #[setter]
    fn set_enabled(&self, value: bool) {
        self.enabled.store(value, Ordering::Relaxed);
    }

    /// A callable run after each backward of this layer has written `arch_alpha.grad`, or None.
    #[getter]
    fn after_backward(&self, py: Python<'_>) -> Option<PyObject> {
        self.after_backward_callback(py)
    }

    #[setter]
    fn set_after_backward(&self, callback: Option<PyObject>) {
        *self.after_backward.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = callback;
    }

    /// Drops every saved forward (a new architecture was sampled).
    fn clear_context(&self) {
        self.stack().clear();
    }

    fn __len__(&self) -> usize {
        self.stack().len()
    }

    /// The callable to pass to `register_full_backward_hook`.
    #[getter]
    fn backward_hook(slf: &Bound<'_, Self>) -> BackwardHook {
        BackwardHook::new(slf.clone().unbind())
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, (PyObject, PyObject, Option<String>))> {
        let cls = py.get_type::<Self>().into_any();
        Ok((cls, (self.arch_alpha.clone_ref(py), self.softmax.clone_ref(py), self.label.clone())))
    }

    fn __repr__(&self) -> String {
        format!("ProxylessContext(label={:?}, saved={})", self.label, self.stack().len())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.arch_alpha)?;
        visit.call(&self.softmax)?;
        if let Ok(slot) = self.after_backward.try_lock() {
            if let Some(callback) = slot.as_ref() {
                visit.call(callback)?;
            }
        }
        // The lock is only ever held across Vec operations, never across Python code,
        // so it is free whenever the collector runs; skip rather than risk blocking.
        let Ok(stack) = self.saved.try_lock() else { return Ok(()) };
        for saved in stack.iter() {
            visit.call(&saved.args)?;
            if let Some(kwargs) = &saved.kwargs {
                visit.call(kwargs)?;
            }
        }
        Ok(())
    }
}
