//! The per-layer side of a ProxylessNAS mixed layer: how it draws its path, and its forward.
//!
//! Each forward that a backward can follow hands what that backward needs (the detached inputs,
//! the output's tensors, the sampled index) to a hook on that call's output, which owns it: calls
//! of one layer may be back-propagated in any order, some not at all, some twice
//! (`retain_graph=True`), and activation checkpointing may re-run a forward inside a backward.
//! Nothing is kept per layer but a count of the calls still alive.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tch::Tensor;

use crate::arch::{ArchParameter, TwoPathDraw};
use crate::errors::in_context;
use crate::interop::autograd_state::grad_mode_enabled;
use crate::interop::module_call::call_candidate;
use crate::layer::saved_call::{LiveCall, SavedCall, SavedInput};
use crate::layer::Layer;
use crate::{interop::tree, layer::tap};

/// What `ProxylessContext.__new__` takes back when unpickled: arch, softmax, label, name, mode.
type ContextArgs = (Py<ArchParameter>, PyObject, PyObject, String, &'static str);

/// The Rust side of one ProxylessNAS mixed layer: its architecture parameter (shared with the
/// layers of the same label), the softmax that turns it into path probabilities, the mode, and
/// the layer's forward, which hands each call's saved state to a hook on that call's output.
///
/// Nothing is saved when no backward can give alpha a gradient (grad mode off, alpha does not
/// require grad, the output holds no floating-point tensor, or `enabled` is off), so validation
/// under `torch.no_grad()` or a frozen architecture leaves nothing behind.
#[pyclass(frozen, module = "proxyless_rs._core")]
pub struct ProxylessContext {
    /// The architecture parameter, the softmax, the label and the name: shared with the
    /// backward of every saved call, owned (for the garbage collector) here.
    layer: Arc<Layer>,
    /// Off inside `proxyless_rs.no_arch_grad()`: forwards save nothing and hook nothing.
    enabled: AtomicBool,
    two_path: AtomicBool,
    live: Arc<AtomicUsize>,
    /// Forwards run with grad mode on since it was last set to 0 (a one-shot module's bookkeeping).
    grad_forwards: AtomicUsize,
}

impl ProxylessContext {
    pub fn name(&self) -> &str {
        &self.layer.name
    }

    fn check_mode(&self, py: Python<'_>, mode: &str) -> PyResult<bool> {
        match mode {
            "full" => Ok(false),
            "two" if self.layer.n_candidates(py)? < 2 => Err(PyValueError::new_err(format!(
                "{}: two-path mode needs at least two candidates, it has {}.",
                self.layer.name,
                self.layer.n_candidates(py)?
            ))),
            "two" => Ok(true),
            other => Err(PyValueError::new_err(format!(
                "{}: mode '{other}' does not exist; use \"full\" (every candidate gets a gate gradient, as in NNI) \
                 or \"two\" (two-path binarization).",
                self.layer.name
            ))),
        }
    }

    /// `n` distinct indices (1 or 2) from `probs`, as `torch.multinomial(probs, n)` draws them.
    fn multinomial(&self, probs: &Tensor, n: i64) -> PyResult<Vec<i64>> {
        let in_layer = in_context(&self.layer.name);
        if self.layer.softmax_dim.is_none() {
            // A custom softmax may return anything: libtorch's own checks say what is wrong.
            return match n {
                1 => Ok(vec![crate::arch::sampling::draw(probs).map_err(in_layer)?]),
                _ => crate::arch::sampling::draw_pair(probs).map(|(a, b)| vec![a, b]).map_err(in_layer),
            };
        }
        crate::arch::sampling::draw_from_softmax(probs, n).map_err(in_layer)?.ok_or_else(|| {
            PyRuntimeError::new_err(format!(
                "{}: softmax(alpha) is not a probability distribution (alpha holds NaN or infinite values), so no \
                 path can be drawn; the architecture step diverged, or alpha was set to such a value",
                self.layer.name
            ))
        })
    }

    /// Draws one path (full mode) or two (two-path mode), agreed across ranks where an agreement
    /// is set; returns the active index (a two-path draw is recorded in the parameter).
    fn draw(&self, py: Python<'_>) -> PyResult<i64> {
        let _no_grad = tch::no_grad_guard();
        let arch = self.layer.arch.get();
        let probs = self.layer.probs(py)?;
        if !self.two_path.load(Ordering::Relaxed) {
            let index = self.multinomial(&probs, 1)?[0];
            let index = arch.agree(py, vec![index])?[0];
            return Ok(index);
        }
        // Two distinct candidates from softmax(alpha), then the active one of the two from the
        // softmax of their two logits (mit-han-lab's MixedEdge, mode "two").
        let pair = self.multinomial(&probs, 2)?;
        let (first, second) = (pair[0], pair[1]);
        let pair_probs = self.layer.probs_of(py, &self.layer.alpha_at(py, &[first, second])?)?;
        let pick = self.multinomial(&pair_probs, 1)?[0];
        let (active, inactive) = if pick == 0 { (first, second) } else { (second, first) };
        let agreed = arch.agree(py, vec![active, inactive])?;
        let (active, inactive) = (agreed[0], agreed[1]);
        let before = arch.tensor(py)?.f_detach_copy().map_err(in_context(&self.layer.name))?;
        arch.set_pending(TwoPathDraw { active, inactive, before });
        Ok(active)
    }
}

#[pymethods]
impl ProxylessContext {
    /// `arch` is the layer's architecture parameter: an `ArchParameter` (shared by the layers of
    /// one label) or a bare alpha tensor (given one of its own). `name` is what error messages
    /// call the layer (default: `ProxylessContext <label>`).
    #[new]
    #[pyo3(signature = (arch, softmax, label=None, name=None, mode="full"))]
    fn new(
        arch: &Bound<'_, PyAny>,
        softmax: PyObject,
        label: Option<PyObject>,
        name: Option<String>,
        mode: &str,
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
            layer: Arc::new(Layer::new(py, arch, softmax, label, name)?),
            enabled: AtomicBool::new(true),
            two_path: AtomicBool::new(false),
            live: Arc::new(AtomicUsize::new(0)),
            grad_forwards: AtomicUsize::new(0),
        };
        ctx.two_path.store(ctx.check_mode(py, mode)?, Ordering::Relaxed);
        Ok(ctx)
    }

    /// The module turning alpha into path probabilities.
    #[getter]
    fn softmax(&self, py: Python<'_>) -> PyObject {
        self.layer.softmax.clone_ref(py)
    }

    #[getter]
    fn label(&self, py: Python<'_>) -> PyObject {
        self.layer.label.clone_ref(py)
    }

    /// What error messages call the layer, e.g. `ProxylessMixedLayer 'op'`.
    #[getter(name)]
    fn py_name(&self) -> String {
        self.layer.name.clone()
    }

    /// The architecture logits.
    #[getter]
    fn arch_alpha(&self, py: Python<'_>) -> PyObject {
        self.layer.arch.get().alpha_object(py).clone().unbind()
    }

    /// The shared state of the architecture parameter (see `ArchParameter`).
    #[getter(arch)]
    fn py_arch(&self, py: Python<'_>) -> Py<ArchParameter> {
        self.layer.arch.clone_ref(py)
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

    /// The number of forwards run with grad mode on since this was last set (to 0).
    #[getter]
    fn grad_forwards(&self) -> usize {
        self.grad_forwards.load(Ordering::Relaxed)
    }

    #[setter]
    fn set_grad_forwards(&self, value: usize) {
        self.grad_forwards.store(value, Ordering::Relaxed);
    }

    /// Two-path mode: the candidate whose gate joins `index`'s in the backward of a forward
    /// running `index` now: the other candidate of the pending draw of this layer's parameter, if
    /// that draw chose `index` (the parameter's draw is the one record of it: a rescale ends it,
    /// and a forward after that, or of an index the draw did not choose, falls back to full mode).
    fn partner_of(&self, index: i64) -> Option<i64> {
        if self.two_path.load(Ordering::Relaxed) {
            self.layer.arch.get().partner_of(index)
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
        let n = self.layer.n_candidates(py)?;
        if !(0..n).contains(&index) {
            return Err(PyValueError::new_err(format!("{}: index {index} is not in 0..{n}", self.layer.name)));
        }
        Ok(index)
    }

    /// Runs the layer's candidate `index` on `args` / `kwargs` through `module.forward_path` and
    /// returns its output; when a backward can follow, the output's tensors are hooked so that
    /// backward through them runs the binary-gate backward of this call.
    ///
    /// The output must be a tensor, or a tuple, list or dict of tensors and pass-through values
    /// (checked always, so a bad candidate fails at forward, not in backward).
    #[pyo3(signature = (module, args, kwargs, index))]
    fn forward(
        slf: &Bound<'_, Self>,
        module: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
        index: i64,
    ) -> PyResult<PyObject> {
        let py = module.py();
        let ctx = slf.get();
        let kwargs = kwargs.filter(|kwargs| !kwargs.is_empty());
        let grad_mode = grad_mode_enabled();
        if grad_mode {
            ctx.grad_forwards.fetch_add(1, Ordering::Relaxed);
        }
        // The tensor autograd sees as the layer's alpha in this call: the module's `_arch_alpha`
        // (which torch.func.functional_call may substitute), else the shared parameter's.
        let alpha = match crate::interop::module_call::module_attribute(module, intern!(py, "_arch_alpha")) {
            Ok(alpha) => alpha,
            Err(_) => ctx.layer.arch.get().alpha_object(py).clone(),
        };
        let saving = ctx.enabled.load(Ordering::Relaxed)
            && grad_mode
            && tree::expect_tensor(&alpha, "arch_alpha")?.requires_grad();
        let input = if saving { Some(SavedInput::detach(args, kwargs)?) } else { None };

        let layer_output = call_candidate(module, index, args, kwargs)?;
        let sampled = || format!("{}: the sampled {}", ctx.layer.name, ctx.layer.describe_candidate(module, index));
        let (parts, output) = tree::output_tensors(&layer_output, &sampled)?;
        let Some(input) = input else { return Ok(layer_output.unbind()) };
        if !output.tensors.iter().flatten().any(Tensor::is_floating_point) {
            return Ok(layer_output.unbind());
        }
        let call = SavedCall::new(
            py,
            &ctx.layer.name,
            &|| ctx.layer.describe_candidate(module, index),
            input,
            &output,
            index,
            ctx.partner_of(index),
            alpha.unbind(),
            LiveCall::new(&ctx.live),
        )?;
        tap::tap(&ctx.layer, module, &layer_output, parts, &output, call)
    }

    /// The number of this layer's forward calls whose saved state is alive (hooked outputs whose
    /// backward has not run, or ran with `retain_graph=True`).
    fn __len__(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, ContextArgs)> {
        let cls = py.get_type::<Self>().into_any();
        Ok((
            cls,
            (
                self.layer.arch.clone_ref(py),
                self.layer.softmax.clone_ref(py),
                self.layer.label.clone_ref(py),
                self.layer.name.clone(),
                self.mode(),
            ),
        ))
    }

    fn __repr__(&self) -> String {
        format!("ProxylessContext({}, mode={:?}, live calls={})", self.layer.name, self.mode(), self.__len__())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.layer.arch)?;
        visit.call(&self.layer.softmax)?;
        visit.call(&self.layer.label)
    }
}
