//! The per-choice side of a ProxylessNAS choice: how it draws its path, and its forward.
//!
//! Each forward that a backward can follow hands what that backward needs (the detached inputs,
//! the output's tensors, the sampled index) to a hook on that call's output, which owns it: calls
//! of one layer may be back-propagated in any order, some not at all, some twice
//! (`retain_graph=True`), and activation checkpointing may re-run a forward inside a backward.
//! Nothing is kept per layer but a count of the calls still alive.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tch::Tensor;

use crate::arch::sampling::DrawCache;
use crate::arch::{locked, ArchParameter, TwoPathDraw};
use crate::choice::saved_call::{LiveCall, SavedCall, SavedInput};
use crate::choice::Choice;
use crate::errors::in_context;
use crate::interop::autograd_state::grad_mode_enabled;
use crate::interop::module_call::call_alternative;
use crate::{choice::tap, interop::tree};

/// What `ProxylessContext.__new__` takes back when unpickled: arch, softmax, label, name, mode,
/// names, noun.
type ContextArgs = (Py<ArchParameter>, PyObject, PyObject, String, &'static str, Option<PyObject>, String);

/// The Rust side of one ProxylessNAS choice: its architecture parameter (shared with the choices of
/// the same label), the softmax that turns it into path probabilities, the mode, and the forward,
/// which hands each call's saved state to a hook on that call's output.
///
/// Nothing is saved when no backward can give alpha a gradient (grad mode off, alpha does not
/// require grad, the output holds no floating-point tensor, or `enabled` is off), so validation
/// under `torch.no_grad()` or a frozen architecture leaves nothing behind.
#[pyclass(frozen, module = "proxyless_rs._core")]
pub struct ProxylessContext {
    /// The architecture parameter, the softmax, the label and the name: shared with the
    /// backward of every saved call, owned (for the garbage collector) here.
    choice: Arc<Choice>,
    /// Off inside `proxyless_rs.no_arch_grad()`: forwards save nothing and hook nothing.
    enabled: AtomicBool,
    two_path: AtomicBool,
    live: Arc<AtomicUsize>,
    /// The last draw's softmax(alpha), while alpha keeps its values, and the exponential draws'
    /// buffer (used where the softmax is `nn.Softmax`, so no Python runs under the lock).
    draws: Mutex<DrawCache>,
}

impl ProxylessContext {
    pub fn name(&self) -> &str {
        &self.choice.name
    }

    /// Whether a backward can give alpha a gradient through this call, so that it is saved.
    fn saving(&self, alpha: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.enabled.load(Ordering::Relaxed)
            && grad_mode_enabled()
            && tree::expect_tensor(alpha, "arch_alpha")?.requires_grad())
    }

    /// Checks `output` (alternative `index`'s) and, where `input` was saved and the output holds a
    /// floating-point tensor, passes it through the gradient tap with this call's saved state.
    fn tap_output(
        &self,
        alternatives: &Bound<'_, PyAny>,
        input: Option<SavedInput>,
        output: Bound<'_, PyAny>,
        index: i64,
        alpha: &Bound<'_, PyAny>,
        recompute_modified_output: bool,
    ) -> PyResult<PyObject> {
        let py = output.py();
        let choice = &self.choice;
        let sampled = || format!("{}: the sampled {}", choice.name, choice.describe_alternative(py, index));
        let (parts, tensors) = tree::output_tensors(&output, &sampled)?;
        let Some(input) = input else { return Ok(output.unbind()) };
        if !tensors.tensors.iter().flatten().any(Tensor::is_floating_point) {
            return Ok(output.unbind());
        }
        let call = SavedCall::new(
            py,
            &choice.name,
            &|| choice.describe_alternative(py, index),
            input,
            &tensors,
            index,
            self.partner_of(index),
            alpha.clone().unbind(),
            recompute_modified_output,
            LiveCall::new(&self.live),
        )?;
        tap::tap(choice, alternatives, &output, parts, &tensors, call)
    }

    fn check_mode(&self, py: Python<'_>, mode: &str) -> PyResult<bool> {
        match mode {
            "full" => Ok(false),
            "two" if self.choice.n_candidates(py)? < 2 => Err(PyValueError::new_err(format!(
                "{}: two-path mode needs at least two candidates, it has {}.",
                self.choice.name,
                self.choice.n_candidates(py)?
            ))),
            "two" => Ok(true),
            other => Err(PyValueError::new_err(format!(
                "{}: mode '{other}' does not exist; use \"full\" (every candidate gets a gate gradient, as in NNI) \
                 or \"two\" (two-path binarization).",
                self.choice.name
            ))),
        }
    }

    /// `n` distinct indices (1 or 2) from `probs`, as `torch.multinomial(probs, n)` draws them.
    fn multinomial(&self, probs: &Tensor, n: i64) -> PyResult<Vec<i64>> {
        let in_layer = in_context(&self.choice.name);
        if self.choice.softmax_dim.is_none() {
            // A custom softmax may return anything: libtorch's own checks say what is wrong.
            return match n {
                1 => Ok(vec![crate::arch::sampling::draw(probs).map_err(in_layer)?]),
                _ => crate::arch::sampling::draw_pair(probs).map(|(a, b)| vec![a, b]).map_err(in_layer),
            };
        }
        locked(&self.draws).draw(probs, n).map_err(in_layer)?.ok_or_else(|| self.no_distribution())
    }

    fn no_distribution(&self) -> PyErr {
        PyRuntimeError::new_err(format!(
            "{}: softmax(alpha) is not a probability distribution (alpha holds NaN or infinite values), so no \
             path can be drawn; the architecture step diverged, or alpha was set to such a value",
            self.choice.name
        ))
    }

    /// `softmax(alpha)`: kept from the last draw while alpha holds the same values where the
    /// softmax is `nn.Softmax` (see `DrawCache`); a custom softmax is called each time.
    fn probs(&self, py: Python<'_>) -> PyResult<Tensor> {
        if self.choice.softmax_dim.is_none() {
            return self.choice.probs(py);
        }
        let alpha = self.choice.arch.get().tensor(py)?;
        locked(&self.draws).probs(&alpha, |alpha| self.choice.probs_of(py, alpha))
    }

    /// Draws one path (full mode) or two (two-path mode), agreed across ranks where an agreement
    /// is set; returns the active index (a two-path draw is recorded in the parameter).
    fn draw(&self, py: Python<'_>) -> PyResult<i64> {
        let _no_grad = tch::no_grad_guard();
        let arch = self.choice.arch.get();
        if !self.two_path.load(Ordering::Relaxed) {
            let index = match self.choice.softmax_dim {
                Some(dim) => {
                    let alpha = arch.tensor(py)?; // taken before the lock, under which no Python runs
                    let drawn = locked(&self.draws).draw_one(&alpha, dim);
                    drawn.map_err(in_context(&self.choice.name))?.ok_or_else(|| self.no_distribution())?
                }
                None => self.multinomial(&self.choice.probs(py)?, 1)?[0],
            };
            let index = arch.agree(py, vec![index])?[0];
            return Ok(index);
        }
        let probs = self.probs(py)?;
        // Two distinct candidates from softmax(alpha), then the active one of the two from the
        // softmax of their two logits (mit-han-lab's MixedEdge, mode "two").
        let pair = self.multinomial(&probs, 2)?;
        let (first, second) = (pair[0], pair[1]);
        let pair_probs = self.choice.probs_of(py, &self.choice.alpha_at(py, &[first, second])?)?;
        let pick = self.multinomial(&pair_probs, 1)?[0];
        let (active, inactive) = if pick == 0 { (first, second) } else { (second, first) };
        let agreed = arch.agree(py, vec![active, inactive])?;
        let (active, inactive) = (agreed[0], agreed[1]);
        let before = arch.tensor(py)?.f_detach_copy().map_err(in_context(&self.choice.name))?;
        arch.set_pending(TwoPathDraw { active, inactive, before });
        Ok(active)
    }
}

#[pymethods]
impl ProxylessContext {
    /// `arch` is the choice's architecture parameter: an `ArchParameter` (shared by the choices of
    /// one label) or a bare alpha tensor (given one of its own). `name` is what error messages
    /// call the choice (default: `ProxylessContext <label>`); `names` the alternatives' names and
    /// `noun` what an alternative is called there (`candidate 'conv' (index 0)`).
    #[new]
    #[pyo3(signature = (arch, softmax, label=None, name=None, mode="full", names=None, noun="candidate"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        arch: &Bound<'_, PyAny>,
        softmax: PyObject,
        label: Option<PyObject>,
        name: Option<String>,
        mode: &str,
        names: Option<PyObject>,
        noun: &str,
    ) -> PyResult<Self> {
        let py = arch.py();
        let arch = match arch.downcast::<ArchParameter>() {
            Ok(arch) => arch.clone().unbind(),
            Err(_) => Py::new(py, ArchParameter::new(arch)?)?,
        };
        let label = label.unwrap_or_else(|| py.None());
        let name = match name {
            Some(name) => name,
            None => format!("ProxylessContext {}", label.bind(py).repr()?),
        };
        let ctx = Self {
            choice: Arc::new(Choice::new(py, arch, softmax, label, name, names, noun.to_owned())?),
            enabled: AtomicBool::new(true),
            two_path: AtomicBool::new(false),
            live: Arc::new(AtomicUsize::new(0)),
            draws: Mutex::new(DrawCache::default()),
        };
        ctx.two_path.store(ctx.check_mode(py, mode)?, Ordering::Relaxed);
        Ok(ctx)
    }

    /// The module turning alpha into path probabilities.
    #[getter]
    fn softmax(&self, py: Python<'_>) -> PyObject {
        self.choice.softmax.clone_ref(py)
    }

    #[getter]
    fn label(&self, py: Python<'_>) -> PyObject {
        self.choice.label.clone_ref(py)
    }

    /// What error messages call the choice, e.g. `ProxylessMixedLayer 'op'`.
    #[getter(name)]
    fn py_name(&self) -> String {
        self.choice.name.clone()
    }

    /// The architecture logits.
    #[getter]
    fn arch_alpha(&self, py: Python<'_>) -> PyObject {
        self.choice.arch.get().alpha_object(py).clone().unbind()
    }

    /// The shared state of the architecture parameter (see `ArchParameter`).
    #[getter(arch)]
    fn py_arch(&self, py: Python<'_>) -> Py<ArchParameter> {
        self.choice.arch.clone_ref(py)
    }

    /// `'full'` (every candidate's gate gets a gradient) or `'two'` (two-path binarization).
    #[getter]
    fn mode(&self) -> &'static str {
        if self.two_path.load(Ordering::Relaxed) {
            "two"
        } else {
            "full"
        }
    }

    #[setter]
    fn set_mode(&self, py: Python<'_>, mode: &str) -> PyResult<()> {
        let two = self.check_mode(py, mode)?;
        self.two_path.store(two, Ordering::Relaxed);
        Ok(())
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

    /// Two-path mode: the candidate whose gate joins `index`'s in the backward of a forward
    /// running `index` now: the other candidate of the pending draw of this layer's parameter, if
    /// that draw chose `index` (the parameter's draw is the one record of it: a rescale ends it,
    /// and a forward after that, or of an index the draw did not choose, falls back to full mode).
    fn partner_of(&self, index: i64) -> Option<i64> {
        if self.two_path.load(Ordering::Relaxed) {
            self.choice.arch.get().partner_of(index)
        } else {
            None
        }
    }

    /// Sets the path for the next forwards and returns its index: `chosen` (taken from a memo; in
    /// two-path mode it joins the pending draw of this parameter if that draw chose it, else the
    /// backward falls back to full mode), or, if None, a draw from `softmax(alpha)` with
    /// `torch.multinomial`'s generator (two distinct candidates and the active one of them in
    /// two-path mode), agreed across ranks where `arch.agreement` is set.
    #[pyo3(signature = (chosen=None))]
    fn resample(&self, py: Python<'_>, chosen: Option<i64>) -> PyResult<i64> {
        let Some(index) = chosen else { return self.draw(py) };
        let n = self.choice.n_candidates(py)?;
        if !(0..n).contains(&index) {
            return Err(PyValueError::new_err(format!("{}: index {index} is not in 0..{n}", self.choice.name)));
        }
        Ok(index)
    }

    /// Runs alternative `index` of the choice on `args` / `kwargs` and returns its output; when a
    /// backward can follow, the output's tensors are tapped so that backward through them runs the
    /// binary-gate backward of this call. `alternatives` is the choice's alternatives as the core
    /// calls them (a list of callables, or one callable taking the index first: see
    /// `module_call::call_alternative`); `alpha` the tensor autograd sees as the choice's logits in
    /// this call (`torch.func.functional_call` may have substituted the parameter's).
    ///
    /// The output must be a tensor, or a tuple, list or dict of tensors and pass-through values
    /// (checked always, so a bad alternative fails at forward, not in backward).
    #[pyo3(signature = (alternatives, args, kwargs, index, alpha))]
    fn forward(
        &self,
        alternatives: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
        index: i64,
        alpha: &Bound<'_, PyAny>,
    ) -> PyResult<PyObject> {
        let kwargs = kwargs.filter(|kwargs| !kwargs.is_empty());
        let input = if self.saving(alpha)? { Some(SavedInput::detach(args, kwargs)?) } else { None };
        let output = call_alternative(alternatives, index, args, kwargs)?;
        self.tap_output(alternatives, input, output, index, alpha, false)
    }

    /// What `forward` does after its call: taps `output`, which the caller computed as alternative
    /// `index` on `args` / `kwargs` (a mixed operation's output, tapped once per label). The
    /// arguments are saved as they are now (an in-place change the call made to them goes unseen).
    /// An output modified in place after this (an in-place activation after a convolution) is not
    /// refused: backward computes alternative `index` again from the saved arguments.
    #[pyo3(signature = (alternatives, args, kwargs, index, alpha, output))]
    fn tap(
        &self,
        alternatives: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
        index: i64,
        alpha: &Bound<'_, PyAny>,
        output: Bound<'_, PyAny>,
    ) -> PyResult<PyObject> {
        let kwargs = kwargs.filter(|kwargs| !kwargs.is_empty());
        let input = if self.saving(alpha)? { Some(SavedInput::detach(args, kwargs)?) } else { None };
        self.tap_output(alternatives, input, output, index, alpha, true)
    }

    /// The number of this choice's calls whose saved state is alive (hooked outputs whose
    /// backward has not run, or ran with `retain_graph=True`).
    fn __len__(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, ContextArgs)> {
        let cls = py.get_type::<Self>().into_any();
        Ok((
            cls,
            (
                self.choice.arch.clone_ref(py),
                self.choice.softmax.clone_ref(py),
                self.choice.label.clone_ref(py),
                self.choice.name.clone(),
                self.mode(),
                self.choice.names.as_ref().map(|names| names.clone_ref(py)),
                self.choice.noun.clone(),
            ),
        ))
    }

    fn __repr__(&self) -> String {
        format!("ProxylessContext({}, mode={:?}, live calls={})", self.choice.name, self.mode(), self.__len__())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.choice.arch)?;
        visit.call(&self.choice.softmax)?;
        visit.call(&self.choice.label)?;
        if let Some(names) = &self.choice.names {
            visit.call(names)?;
        }
        Ok(())
    }
}
