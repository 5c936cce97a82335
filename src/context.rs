//! The per-layer side of a ProxylessNAS mixed layer: how it draws its path, and its forward.
//!
//! Each forward that a backward can follow hands what that backward needs (the detached inputs,
//! the output's tensors, the sampled index) to a hook on that call's output, which owns it: calls
//! of one layer may be back-propagated in any order, some not at all, some twice
//! (`retain_graph=True`), and activation checkpointing may re-run a forward inside a backward.
//! Nothing is kept per layer but a count of the calls still alive.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tch::{Kind, Tensor};

use crate::arch::{ArchParameter, TwoPathDraw};
use crate::errors::in_context;
use crate::hook::{self, SavedCall, Watched};
use crate::tree;

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
pub fn grad_mode_enabled() -> bool {
    // libtorch only offers a setter that returns the previous state: set, then restore.
    // SAFETY: plain thread-local flag accesses that cannot fail.
    unsafe {
        let previous = torch_sys::at_grad_set_enabled(1);
        torch_sys::at_grad_set_enabled(previous);
        previous != 0
    }
}

const NO_PARTNER: i64 = -1;

/// What `ProxylessContext.__new__` takes back when unpickled: arch, softmax, label, name, mode.
type ContextArgs = (Py<ArchParameter>, PyObject, PyObject, String, &'static str);

/// Counts a layer's calls whose saved forward is still alive (`len(ctx)`).
pub struct LiveCall(Arc<AtomicUsize>);

impl LiveCall {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for LiveCall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The Rust side of one ProxylessNAS mixed layer: its architecture parameter (shared with the
/// layers of the same label), the softmax that turns it into path probabilities, the mode, and
/// the layer's forward, which hands each call's saved state to a hook on that call's output.
///
/// Nothing is saved when no backward can give alpha a gradient (grad mode off, alpha does not
/// require grad, the output holds no floating-point tensor, or `enabled` is off), so validation
/// under `torch.no_grad()` or a frozen architecture leaves nothing behind.
#[pyclass(frozen, module = "proxyless_rs._core")]
pub struct ProxylessContext {
    arch: Py<ArchParameter>,
    #[pyo3(get)]
    pub softmax: PyObject,
    #[pyo3(get)]
    label: PyObject,
    /// What error messages call the layer, e.g. `ProxylessMixedLayer 'op'`.
    #[pyo3(get)]
    name: String,
    /// `Some(dim)` when `softmax` is exactly `torch.nn.Softmax(dim)`: then probabilities are
    /// computed here instead of through a Python module call (a stochastic or custom softmax,
    /// e.g. NNI's GumbelSoftmax, is always called).
    softmax_dim: Option<i64>,
    /// Off inside `proxyless_rs.no_arch_grad()`: forwards save nothing and hook nothing.
    enabled: AtomicBool,
    two_path: AtomicBool,
    /// Two-path mode: the other candidate of the current draw (`NO_PARTNER` in full mode, or when
    /// the index came from a memo that no two-path draw of this parameter made).
    partner: AtomicI64,
    live: Arc<AtomicUsize>,
    /// Forwards run with grad mode on since it was last set to 0 (a one-shot module's bookkeeping).
    grad_forwards: AtomicUsize,
}

impl ProxylessContext {
    pub fn arch<'py>(&self, py: Python<'py>) -> &Bound<'py, ArchParameter> {
        self.arch.bind(py)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Two-path mode: the other candidate of the current draw, or None.
    fn current_partner(&self) -> Option<i64> {
        match self.partner.load(Ordering::Relaxed) {
            NO_PARTNER => None,
            partner => Some(partner),
        }
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
        crate::kernel::gather(&self.arch.get().tensor(py)?, indices).map_err(in_context(&self.name))
    }

    fn n_candidates(&self, py: Python<'_>) -> PyResult<i64> {
        Ok(self.arch.get().tensor(py)?.size()[0])
    }

    fn check_mode(&self, py: Python<'_>, mode: &str) -> PyResult<bool> {
        match mode {
            "full" => Ok(false),
            "two" if self.n_candidates(py)? < 2 => Err(PyValueError::new_err(format!(
                "{}: two-path mode needs at least two candidates, it has {}.",
                self.name,
                self.n_candidates(py)?
            ))),
            "two" => Ok(true),
            other => Err(PyValueError::new_err(format!(
                "{}: mode '{other}' does not exist; use \"full\" (every candidate gets a gate gradient, as in NNI) \
                 or \"two\" (two-path binarization).",
                self.name
            ))),
        }
    }

    /// "candidate 'tanh' (index 1)" where the layer names its candidates (`names` under NNI 3.0,
    /// `op_names` under NNI 2.10), else "candidate 1".
    pub fn describe_candidate(&self, module: &Bound<'_, PyAny>, index: i64) -> String {
        let py = module.py();
        let name = module
            .getattr(intern!(py, "names"))
            .or_else(|_| module.getattr(intern!(py, "op_names")))
            .and_then(|names| names.get_item(index))
            .and_then(|name| name.repr())
            .map(|name| name.to_string());
        match name {
            Ok(name) => format!("candidate {name} (index {index})"),
            Err(_) => format!("candidate {index}"),
        }
    }

    /// Draws one path (full mode) or two (two-path mode), agreed across ranks where an agreement
    /// is set; returns the active index and records the partner.
    fn draw(&self, py: Python<'_>) -> PyResult<i64> {
        let _no_grad = tch::no_grad_guard();
        let arch = self.arch.get();
        let probs = self.probs(py)?;
        if !self.two_path.load(Ordering::Relaxed) {
            let index = crate::sampling::draw(&probs).map_err(in_context(&self.name))?;
            let index = arch.agree(py, vec![index])?[0];
            self.partner.store(NO_PARTNER, Ordering::Relaxed);
            return Ok(index);
        }
        // Two distinct candidates from softmax(alpha), then the active one of the two from the
        // softmax of their two logits (mit-han-lab's MixedEdge, mode "two").
        let (first, second) = crate::sampling::draw_pair(&probs).map_err(in_context(&self.name))?;
        let pair_probs = self.probs_of(py, &self.alpha_at(py, &[first, second])?)?;
        let pick = crate::sampling::draw(&pair_probs).map_err(in_context(&self.name))?;
        let (active, inactive) = if pick == 0 { (first, second) } else { (second, first) };
        let agreed = arch.agree(py, vec![active, inactive])?;
        let (active, inactive) = (agreed[0], agreed[1]);
        let before = arch.tensor(py)?.f_detach_copy().map_err(in_context(&self.name))?;
        arch.set_pending(TwoPathDraw { active, inactive, before });
        self.partner.store(inactive, Ordering::Relaxed);
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
        let softmax_dim = plain_softmax_dim(softmax.bind(py))?;
        let ctx = Self {
            arch,
            softmax,
            label,
            name,
            softmax_dim,
            enabled: AtomicBool::new(true),
            two_path: AtomicBool::new(false),
            partner: AtomicI64::new(NO_PARTNER),
            live: Arc::new(AtomicUsize::new(0)),
            grad_forwards: AtomicUsize::new(0),
        };
        ctx.two_path.store(ctx.check_mode(py, mode)?, Ordering::Relaxed);
        Ok(ctx)
    }

    /// The architecture logits.
    #[getter]
    fn arch_alpha(&self, py: Python<'_>) -> PyObject {
        self.arch.get().alpha_object(py).clone().unbind()
    }

    /// The shared state of the architecture parameter (see `ArchParameter`).
    #[getter(arch)]
    fn py_arch(&self, py: Python<'_>) -> Py<ArchParameter> {
        self.arch.clone_ref(py)
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
        if !two {
            self.partner.store(NO_PARTNER, Ordering::Relaxed);
        }
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

    /// Two-path mode: the other candidate of the current draw, or None.
    #[getter]
    fn partner(&self) -> Option<i64> {
        self.current_partner()
    }

    /// Sets the path for the next forwards and returns its index: `chosen` (taken from a memo; in
    /// two-path mode it joins the pending draw of this parameter if that draw chose it, else the
    /// backward falls back to full mode), or, if None, a draw from `softmax(alpha)` with
    /// `torch.multinomial`'s generator (two distinct candidates and the active one of them in
    /// two-path mode), agreed across ranks where `arch.agreement` is set.
    #[pyo3(signature = (chosen=None))]
    fn resample(&self, py: Python<'_>, chosen: Option<i64>) -> PyResult<i64> {
        let Some(index) = chosen else { return self.draw(py) };
        let n = self.n_candidates(py)?;
        if !(0..n).contains(&index) {
            return Err(PyValueError::new_err(format!("{}: index {index} is not in 0..{n}", self.name)));
        }
        let partner = if self.two_path.load(Ordering::Relaxed) { self.arch.get().partner_of(index) } else { None };
        self.partner.store(partner.unwrap_or(NO_PARTNER), Ordering::Relaxed);
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
        let alpha = match module.getattr(intern!(py, "_arch_alpha")) {
            Ok(alpha) => alpha,
            Err(_) => ctx.arch.get().alpha_object(py).clone(),
        };
        let saving = ctx.enabled.load(Ordering::Relaxed)
            && grad_mode
            && tree::expect_tensor(&alpha, "arch_alpha")?.requires_grad();
        // Detached before the candidate runs, so that a candidate modifying its input in place
        // (ReLU(inplace=True) first) is caught: the other candidates would see the modified input.
        let mut inputs = Vec::new();
        let saved_input = if saving {
            let args = tree::detach_tree(args.as_any(), &mut inputs)?.into_bound(py).downcast_into::<PyTuple>()?;
            let kwargs = match kwargs {
                Some(kwargs) => {
                    Some(tree::detach_tree(kwargs.as_any(), &mut inputs)?.into_bound(py).downcast_into::<PyDict>()?)
                }
                None => None,
            };
            Some((args, kwargs))
        } else {
            None
        };
        let input_versions =
            inputs.iter().map(|(_, input)| tree::version(input.bind(py))).collect::<PyResult<Vec<_>>>()?;

        let forward_path = module.getattr(intern!(py, "forward_path"))?;
        let layer_output = hook::call_forward_path(&forward_path, index, args, kwargs)?;
        let output = tree::output_tensors(&layer_output, &|| {
            format!("{}: the sampled {}", ctx.name, ctx.describe_candidate(module, index))
        })?;
        let Some((saved_args, saved_kwargs)) = saved_input else { return Ok(layer_output.unbind()) };
        if !output.tensors.iter().flatten().any(Tensor::is_floating_point) {
            return Ok(layer_output.unbind());
        }
        let mut watched = Vec::with_capacity(inputs.len() + output.tensors.len());
        for ((_, input), before) in inputs.iter().zip(input_versions) {
            if tree::version(input.bind(py))? != before {
                return Err(PyRuntimeError::new_err(format!(
                    "{}: the sampled {} modified its input in place (an in-place op such as ReLU(inplace=True) \
                     applied to the layer's input); the binary-gate backward evaluates the other candidates on \
                     that input, which no longer holds its value. Make the candidate's first op out of place.",
                    ctx.name,
                    ctx.describe_candidate(module, index)
                )));
            }
            watched.push(Watched::input(input.clone_ref(py), before));
        }
        let partner = ctx.current_partner();
        let saved = SavedCall::new(
            saved_args.unbind(),
            saved_kwargs.map(Bound::unbind),
            index,
            partner,
            alpha.unbind(),
            watched,
            LiveCall::new(&ctx.live),
        );
        let input_ids: Vec<usize> = inputs.iter().map(|(id, _)| *id).collect();
        hook::attach(slf, module, &layer_output, output, saved, &input_ids)
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
                self.arch.clone_ref(py),
                self.softmax.clone_ref(py),
                self.label.clone_ref(py),
                self.name.clone(),
                self.mode(),
            ),
        ))
    }

    fn __repr__(&self) -> String {
        format!("ProxylessContext({}, mode={:?}, live calls={})", self.name, self.mode(), self.__len__())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.arch)?;
        visit.call(&self.softmax)?;
        visit.call(&self.label)
    }
}
