//! The saved-forward stack of a mixed layer.
//!
//! Each forward call that a backward can follow pushes what the backward hook needs: the
//! detached inputs (to evaluate the other candidates), the output's tensors (to reuse the
//! sampled candidate's output) and the sampled index. Backward pops in reverse order,
//! which is the order autograd runs the calls of one layer in.

use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tch::Tensor;

use crate::hook::BackwardHook;
use crate::tree;

/// What one forward call left for its backward.
pub struct SavedForward {
    pub args: Py<PyTuple>,
    pub kwargs: Option<Py<PyDict>>,
    pub output: Vec<Tensor>,
    pub sample_idx: i64,
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
        Ok(Self { arch_alpha: arch_alpha.clone().unbind(), softmax, label, saved: Mutex::new(Vec::new()) })
    }

    /// Saves one forward call for the backward hook: `layer_input` is `(args, kwargs)`.
    ///
    /// Returns whether anything was saved. The output must be a tensor or a tuple of
    /// tensors (checked always, so a bad candidate fails at forward, not in backward).
    fn save_forward_context(
        &self,
        layer_input: &Bound<'_, PyAny>,
        layer_output: &Bound<'_, PyAny>,
        layer_sample_idx: i64,
    ) -> PyResult<bool> {
        let output = tree::output_tensors(layer_output, &|| {
            format!("{}: the sampled candidate (index {layer_sample_idx})", self.describe())
        })?;
        if !grad_mode_enabled() || !output.iter().any(Tensor::requires_grad) {
            return Ok(false);
        }
        let (args, kwargs) = layer_input
            .extract::<(Bound<'_, PyTuple>, Option<Bound<'_, PyDict>>)>()
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "layer_input must be a tuple (args: tuple, kwargs: dict), got {}",
                    tree::type_name(layer_input)
                ))
            })?;
        let args = tree::detach_tree(args.as_any())?.into_bound(layer_input.py()).downcast_into::<PyTuple>()?;
        let kwargs = match kwargs {
            Some(kwargs) if !kwargs.is_empty() => {
                Some(tree::detach_tree(kwargs.as_any())?.into_bound(layer_input.py()).downcast_into::<PyDict>()?)
            }
            _ => None,
        };
        let output = output.iter().map(Tensor::detach).collect();
        self.stack().push(SavedForward {
            args: args.unbind(),
            kwargs: kwargs.map(Bound::unbind),
            output,
            sample_idx: layer_sample_idx,
        });
        Ok(true)
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
