//! The architecture parameters: the state of one (shared by every choice that shares its label,
//! in this file), the draws of paths from it, and alpha's gradient. Depends on `crate::interop`
//! only.

/// Alpha's gradient from the binary gates' gradients, in closed form; the two-path rescale.
pub mod gradient;
/// Draws of paths on torch's default generator.
pub mod sampling;

use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;
use tch::Tensor;

use crate::errors::in_context;
use crate::interop::tree;

/// A two-path draw waiting for the optimizer step that its rescale follows.
pub struct TwoPathDraw {
    pub active: i64,
    pub inactive: i64,
    /// alpha as it was at the draw.
    pub before: Tensor,
}

pub(crate) fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Locks are held across plain Rust operations only, never across Python code, so a
    // poisoned lock still guards a consistent value.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One architecture parameter (`alpha`, a logit per candidate) and what belongs to it rather than
/// to one layer: its pending two-path draw (one draw and one rescale per parameter, however many
/// layers share it), how its draws are agreed across ranks (`agreement`), and what runs when a
/// backward computes a layer's binary-gate gradient (`after_backward`). Layers that share alpha
/// share this object.
#[pyclass(frozen, module = "proxyless_rs._core")]
pub struct ArchParameter {
    alpha: PyObject,
    pending: Mutex<Option<TwoPathDraw>>,
    agreement: Mutex<Option<PyObject>>,
    after_backward: Mutex<Option<PyObject>>,
}

impl ArchParameter {
    pub fn new(alpha: &Bound<'_, PyAny>) -> PyResult<Self> {
        let tensor = tree::expect_tensor(alpha, "arch_alpha")?;
        if tensor.dim() != 1 {
            return Err(PyValueError::new_err(format!(
                "arch_alpha must be a 1-d tensor (one logit per candidate), got shape {:?}",
                tensor.size()
            )));
        }
        if !tensor.is_floating_point() {
            return Err(PyTypeError::new_err(format!(
                "arch_alpha must be a floating-point tensor (its softmax gives the path probabilities), got {:?}",
                tensor.kind()
            )));
        }
        Ok(Self {
            alpha: alpha.clone().unbind(),
            pending: Mutex::new(None),
            agreement: Mutex::new(None),
            after_backward: Mutex::new(None),
        })
    }

    pub fn alpha_object<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.alpha.bind(py)
    }

    pub fn tensor(&self, py: Python<'_>) -> PyResult<Tensor> {
        tree::expect_tensor(self.alpha.bind(py), "arch_alpha")
    }

    /// `values` as agreed across ranks (rank 0's draw under `proxyless_rs.distributed`), or as given.
    pub fn agree(&self, py: Python<'_>, values: Vec<i64>) -> PyResult<Vec<i64>> {
        let Some(agreement) = locked(&self.agreement).as_ref().map(|a| a.clone_ref(py)) else { return Ok(values) };
        let device = self.alpha.bind(py).getattr(pyo3::intern!(py, "device"))?;
        let agreed: Vec<i64> = agreement.call1(py, (PyList::new(py, &values)?, device))?.extract(py)?;
        if agreed.len() != values.len() {
            return Err(PyValueError::new_err(format!("the agreement returned {agreed:?} for the draw {values:?}")));
        }
        Ok(agreed)
    }

    pub fn set_pending(&self, draw: TwoPathDraw) {
        *locked(&self.pending) = Some(draw);
    }

    /// The other candidate of the pending two-path draw if `active` is its active one.
    pub fn partner_of(&self, active: i64) -> Option<i64> {
        locked(&self.pending).as_ref().filter(|draw| draw.active == active).map(|draw| draw.inactive)
    }

    pub fn run_after_backward(&self, py: Python<'_>) -> PyResult<()> {
        let callback = locked(&self.after_backward).as_ref().map(|c| c.clone_ref(py));
        match callback {
            Some(callback) => callback.call0(py).map(drop),
            None => Ok(()),
        }
    }
}

#[pymethods]
impl ArchParameter {
    #[new]
    fn py_new(alpha: &Bound<'_, PyAny>) -> PyResult<Self> {
        Self::new(alpha)
    }

    /// The architecture logits.
    #[getter]
    fn alpha(&self, py: Python<'_>) -> PyObject {
        self.alpha.clone_ref(py)
    }

    /// `(active, inactive)` of the two-path draw waiting for :meth:`rescale`, or None.
    #[getter]
    fn pending(&self) -> Option<(i64, i64)> {
        locked(&self.pending).as_ref().map(|draw| (draw.active, draw.inactive))
    }

    /// Called as ``agreement(values, device)`` with each draw; returns the values every rank uses.
    #[getter]
    fn agreement(&self, py: Python<'_>) -> Option<PyObject> {
        locked(&self.agreement).as_ref().map(|a| a.clone_ref(py))
    }

    #[setter]
    fn set_agreement(&self, agreement: Option<PyObject>) {
        *locked(&self.agreement) = agreement;
    }

    /// Called with no arguments each time a backward computes a layer's binary-gate gradient, before
    /// autograd adds it into ``alpha.grad``: work that needs the whole gradient is queued for the
    /// end of the backward (``proxyless_rs.distributed`` queues its all-reduce so).
    #[getter]
    fn after_backward(&self, py: Python<'_>) -> Option<PyObject> {
        locked(&self.after_backward).as_ref().map(|c| c.clone_ref(py))
    }

    #[setter]
    fn set_after_backward(&self, callback: Option<PyObject>) {
        *locked(&self.after_backward) = callback;
    }

    /// After the optimizer step that followed a two-path draw: shifts the two drawn logits by one
    /// offset so that their summed ``exp`` is what it was at the draw, and puts every other logit
    /// back (see ``gradient::rescale_subset``). Returns whether a draw was pending.
    fn rescale(&self, py: Python<'_>) -> PyResult<bool> {
        let Some(draw) = locked(&self.pending).take() else { return Ok(false) };
        let _no_grad = tch::no_grad_guard();
        let alpha = self.tensor(py)?;
        crate::arch::gradient::rescale_subset(&alpha, &[draw.active, draw.inactive], &draw.before)
            .map_err(in_context("rescale_two_path"))?;
        Ok(true)
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> (Bound<'py, PyAny>, (PyObject,)) {
        // A pending draw belongs to one step; distributed agreements to one process group.
        (py.get_type::<Self>().into_any(), (self.alpha.clone_ref(py),))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let shape = self.tensor(py).map(|t| t.size()).unwrap_or_default();
        format!("ArchParameter(alpha of shape {shape:?}, pending={:?})", self.pending())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.alpha)?;
        for slot in [&self.agreement, &self.after_backward] {
            if let Ok(slot) = slot.try_lock() {
                if let Some(callback) = slot.as_ref() {
                    visit.call(callback)?;
                }
            }
        }
        Ok(())
    }
}
