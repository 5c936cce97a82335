//! What one forward call of a mixed layer leaves for its backward, built in one place: the
//! inputs, detached before the sampled candidate runs; then, once it has run, the call, with the
//! detached output, the versions of every tensor whose value the backward relies on, and the
//! count of the layer's calls still alive.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tch::Tensor;

use crate::errors::in_context;
use crate::interop::tree;

/// Counts a layer's calls whose saved forward is still alive (`len(ctx)`).
pub struct LiveCall(Arc<AtomicUsize>);

impl LiveCall {
    pub fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for LiveCall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A tensor whose value the backward relies on, with its version at save time.
struct Watched {
    /// A detached alias: it shares the original's version counter, not its autograd history
    /// (holding the output itself would keep its graph, and this call, alive in a cycle).
    tensor: PyObject,
    version: i64,
    /// `None` for an input, else the output element.
    output_element: Option<usize>,
}

/// A call's arguments, detached before its candidate runs, so that a candidate modifying its
/// input in place (ReLU(inplace=True) first) is caught: the other candidates would see the
/// modified input.
pub struct SavedInput {
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
    /// Per input tensor: the identity of the original, its detached alias, and its version.
    tensors: Vec<(usize, PyObject, i64)>,
}

impl SavedInput {
    pub fn detach(args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let py = args.py();
        let mut seen = Vec::new();
        let args = tree::detach_tree(args.as_any(), &mut seen)?.into_bound(py).downcast_into::<PyTuple>()?;
        let kwargs = match kwargs {
            Some(kwargs) => {
                Some(tree::detach_tree(kwargs.as_any(), &mut seen)?.into_bound(py).downcast_into::<PyDict>()?)
            }
            None => None,
        };
        let tensors = seen
            .into_iter()
            .map(|(id, alias)| Ok((id, alias.clone_ref(py), tree::version(alias.bind(py))?)))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Self { args: args.unbind(), kwargs: kwargs.map(Bound::unbind), tensors })
    }

    /// Whether `item` is one of the call's input tensors (by identity).
    pub fn holds(&self, item: &Bound<'_, PyAny>) -> bool {
        self.tensors.iter().any(|(id, _, _)| *id == item.as_ptr() as usize)
    }
}

/// One forward call's saved state: owned by the gradient tap's node of that call's output.
pub struct SavedCall {
    input: SavedInput,
    /// Detached output elements (`None` for pass-through values), and a dict output's keys.
    output: tree::OutputTensors,
    /// The output elements that pass through the gradient tap: its floating-point tensors.
    tapped: Vec<usize>,
    sample_idx: i64,
    /// Two-path mode: the one unsampled candidate whose gate takes part.
    partner: Option<i64>,
    /// The layer's alpha at forward (what the gradient tap took as its input): the probabilities
    /// of the backward are its softmax, and autograd hands it the gradient.
    alpha: PyObject,
    watched: Vec<Watched>,
    /// Whether an output modified in place after the forward is computed again from the saved
    /// inputs in backward (a mixed operation's, which an in-place activation often follows), rather
    /// than refused.
    recompute_modified_output: bool,
    _live: LiveCall,
}

impl SavedCall {
    /// The call, once candidate `sample_idx` has run on `input` and returned `output`. Refuses a
    /// candidate that modified its input in place (`sampled` says which, for the message).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        py: Python<'_>,
        layer_name: &str,
        sampled: &dyn Fn() -> String,
        input: SavedInput,
        output: &tree::OutputTensors,
        sample_idx: i64,
        partner: Option<i64>,
        alpha: PyObject,
        recompute_modified_output: bool,
        live: LiveCall,
    ) -> PyResult<Self> {
        let mut watched = Vec::with_capacity(input.tensors.len() + output.tensors.len());
        for (_, alias, before) in &input.tensors {
            if tree::version(alias.bind(py))? != *before {
                return Err(PyRuntimeError::new_err(format!(
                    "{layer_name}: the sampled {} modified its input in place (an in-place op such as \
                     ReLU(inplace=True) applied to the choice's input); the binary-gate backward evaluates the \
                     other candidates on that input, which no longer holds its value. Make the candidate's first op \
                     out of place.",
                    sampled()
                )));
            }
            watched.push(Watched { tensor: alias.clone_ref(py), version: *before, output_element: None });
        }
        let tapped: Vec<usize> = (0..output.tensors.len())
            .filter(|&i| output.tensors[i].as_ref().is_some_and(Tensor::is_floating_point))
            .collect();
        let in_layer = in_context(layer_name);
        let mut saved = Vec::with_capacity(output.tensors.len());
        for (i, tensor) in output.tensors.iter().enumerate() {
            let Some(tensor) = tensor else {
                saved.push(None);
                continue;
            };
            let detached = tensor.f_detach().map_err(&in_layer)?;
            if tapped.contains(&i) {
                let alias = tree::to_python(py, &detached)?;
                let version = tree::version(alias.bind(py))?;
                watched.push(Watched { tensor: alias, version, output_element: Some(i) });
            }
            saved.push(Some(detached));
        }
        let output = tree::OutputTensors { tensors: saved, others: output.others.clone(), keys: output.keys.clone() };
        Ok(Self { input, output, tapped, sample_idx, partner, alpha, watched, recompute_modified_output, _live: live })
    }

    pub fn input(&self) -> &SavedInput {
        &self.input
    }

    pub fn args<'py>(&self, py: Python<'py>) -> &Bound<'py, PyTuple> {
        self.input.args.bind(py)
    }

    pub fn kwargs<'py>(&self, py: Python<'py>) -> Option<&Bound<'py, PyDict>> {
        self.input.kwargs.as_ref().map(|kwargs| kwargs.bind(py))
    }

    pub fn output(&self) -> &tree::OutputTensors {
        &self.output
    }

    pub fn tapped(&self) -> &[usize] {
        &self.tapped
    }

    pub fn sample_idx(&self) -> i64 {
        self.sample_idx
    }

    pub fn partner(&self) -> Option<i64> {
        self.partner
    }

    pub fn alpha<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.alpha.bind(py)
    }

    /// Refuses a backward whose saved tensors were modified in place since the forward; returns
    /// whether the saved output still holds the forward's values (false where it was modified and
    /// the call recomputes it: see `recompute_modified_output`).
    pub fn check_unmodified(&self, py: Python<'_>, layer_name: &str) -> PyResult<bool> {
        let mut output_intact = true;
        for watched in &self.watched {
            if tree::version(watched.tensor.bind(py))? == watched.version {
                continue;
            }
            if watched.output_element.is_some() && self.recompute_modified_output {
                output_intact = false;
                continue;
            }
            let what = match watched.output_element {
                Some(_) if self.output.tensors.len() == 1 => "its output".to_owned(),
                Some(i) => format!("element {i} of its output"),
                None => "one of its inputs".to_owned(),
            };
            return Err(PyRuntimeError::new_err(format!(
                "{layer_name}: {what} was modified in place after the forward (e.g. `y += x` or an op with \
                 inplace=True on the choice's output); the binary gate of the sampled path needs the values the choice \
                 computed. Use the out-of-place form (`y = y + x`)."
            )));
        }
        Ok(output_intact)
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.input.args)?;
        if let Some(kwargs) = &self.input.kwargs {
            visit.call(kwargs)?;
        }
        Ok(())
    }
}
