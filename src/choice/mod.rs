//! A choice: its forward, one call's saved state, the gradient tap its output passes through, and
//! the binary-gate backward, in the order a training step runs them. The modules below depend on
//! `crate::arch` and `crate::interop`, never the other way round.
//!
//! A choice is what the Python side hands over: n alternatives, each of which can be evaluated on
//! a call's saved arguments (a layer's candidates, a mixed operation's values of one label, an
//! input choice's inputs), with the architecture parameter that weighs them. The core knows
//! nothing else of it: not the module it belongs to, not the NNI class, no attribute name.
//!
//! This file holds what the forward and the calls' backwards all need: the architecture
//! parameter, the softmax that turns it into path probabilities, the names errors give the choice
//! and its alternatives. Immutable after construction, so the choice's context and every saved
//! call share one copy (`Arc<Choice>`).

/// The forward: mode, draws of one or two paths, the call of the chosen candidate.
pub mod context;
/// The binary-gate backward of one call.
pub mod gate;
/// One call's saved state, built in one place.
pub mod saved_call;
/// The autograd node each call's output passes through, with alpha as its input.
pub mod tap;

use pyo3::prelude::*;
use tch::{Kind, Tensor};

use crate::arch::ArchParameter;
use crate::errors::in_context;
use crate::interop::tree;

/// `dim` if `softmax` is exactly `torch.nn.Softmax` with an explicit `dim`, else `None`.
fn plain_softmax_dim(softmax: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    let py = softmax.py();
    let plain = py.import("torch.nn")?.getattr("Softmax")?;
    if !softmax.get_type().is(&plain) {
        return Ok(None);
    }
    softmax.getattr("dim")?.extract::<Option<i64>>()
}

pub struct Choice {
    pub arch: Py<ArchParameter>,
    pub softmax: PyObject,
    pub label: PyObject,
    /// What error messages call the choice, e.g. `ProxylessMixedLayer 'op'`.
    pub name: String,
    /// The alternatives' names for error messages (a layer's candidate names, a label's values), if given.
    pub names: Option<PyObject>,
    /// What error messages call an alternative: `candidate`, `value`, `input`.
    pub noun: String,
    /// `Some(dim)` when `softmax` is exactly `torch.nn.Softmax(dim)`: then probabilities are
    /// computed here instead of through a Python module call (a stochastic or custom softmax,
    /// e.g. NNI's GumbelSoftmax, is always called).
    pub softmax_dim: Option<i64>,
}

impl Choice {
    pub fn new(
        py: Python<'_>,
        arch: Py<ArchParameter>,
        softmax: PyObject,
        label: PyObject,
        name: String,
        names: Option<PyObject>,
        noun: String,
    ) -> PyResult<Self> {
        let softmax_dim = plain_softmax_dim(softmax.bind(py))?;
        Ok(Self { arch, softmax, label, name, names, noun, softmax_dim })
    }

    pub fn arch<'py>(&self, py: Python<'py>) -> &Bound<'py, ArchParameter> {
        self.arch.bind(py)
    }

    /// `softmax(arch_alpha)`, the path probabilities.
    pub fn probs(&self, py: Python<'_>) -> PyResult<Tensor> {
        self.probs_of(py, &self.arch.get().tensor(py)?)
    }

    /// `softmax` applied to `logits`: alpha, or two-path mode's two-element slice of it. (Wrapping
    /// alpha back for a Python softmax hands it the same `torch.Tensor` object: torch keeps one
    /// Python object per tensor.)
    pub fn probs_of(&self, py: Python<'_>, logits: &Tensor) -> PyResult<Tensor> {
        match self.softmax_dim {
            Some(dim) => logits.f_softmax(dim, None::<Kind>).map_err(in_context(&self.name)),
            None => {
                tree::expect_tensor(&self.softmax.bind(py).call1((tree::to_python(py, logits)?,))?, "softmax(logits)")
            }
        }
    }

    /// `alpha[indices]`.
    pub fn alpha_at(&self, py: Python<'_>, indices: &[i64]) -> PyResult<Tensor> {
        crate::arch::gradient::gather(&self.arch.get().tensor(py)?, indices).map_err(in_context(&self.name))
    }

    pub fn n_candidates(&self, py: Python<'_>) -> PyResult<i64> {
        Ok(self.arch.get().tensor(py)?.size()[0])
    }

    /// "candidate 'tanh' (index 1)" where the choice names its alternatives, else "candidate 1".
    pub fn describe_alternative(&self, py: Python<'_>, index: i64) -> String {
        let name = self
            .names
            .as_ref()
            .and_then(|names| names.bind(py).get_item(index).ok())
            .and_then(|name| name.repr().ok())
            .map(|name| name.to_string());
        match name {
            Some(name) => format!("{} {name} (index {index})", self.noun),
            None => format!("{} {index}", self.noun),
        }
    }
}
