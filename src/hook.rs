//! The full backward hook that turns a mixed layer's output gradient into `arch_alpha.grad`.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use tch::{TchError, Tensor};

use crate::context::ProxylessContext;
use crate::{kernel, tree};

/// The callable registered with `module.register_full_backward_hook`.
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

fn tch_message(err: &TchError) -> String {
    match err {
        TchError::Shape(msg) | TchError::Torch(msg) => msg.clone(),
        other => other.to_string(),
    }
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
        let py = module.py();
        let ctx = self.ctx.get();
        let saved = ctx.pop().ok_or_else(|| {
            PyRuntimeError::new_err(format!(
                "{}: backward reached the layer but its saved context is empty. Every backward must \
                 follow a forward with grad enabled, after the last resample(); was backward run twice \
                 (retain_graph=True), or resample() called between forward and backward?",
                ctx.describe()
            ))
        })?;
        let grads = tree::optional_tensors(grad_output)?;
        let alpha_obj = ctx.arch_alpha.bind(py);
        let alpha = tree::expect_tensor(alpha_obj, "arch_alpha")?;
        let options = (alpha.kind(), alpha.device());
        let n_candidates = alpha.size().first().copied().unwrap_or(0);

        let _no_grad = tch::no_grad_guard();
        let forward_path = module.getattr("forward_path")?;
        let args = saved.args.bind(py);
        let kwargs = saved.kwargs.as_ref().map(|kwargs| kwargs.bind(py));
        let mut gate_grads = Vec::with_capacity(n_candidates as usize);
        for k in 0..n_candidates {
            let gate = if k == saved.sample_idx {
                kernel::binary_gate_grad(&saved.output, &grads)
            } else {
                let mut call_args = Vec::with_capacity(args.len() + 1);
                call_args.push(k.into_pyobject(py)?.into_any());
                call_args.extend(args.iter());
                let call_args = PyTuple::new(py, call_args)?;
                let out = forward_path.call(call_args, kwargs)?;
                let out = tree::output_tensors(&out, &|| format!("{}: candidate {k}", ctx.describe()))?;
                kernel::binary_gate_grad(&out, &grads)
            }
            .map_err(in_layer(ctx))?;
            let gate = match gate {
                Some(gate) => gate.f_to_kind(options.0).and_then(|g| g.f_to_device(options.1)),
                None => Tensor::f_zeros([], options),
            };
            gate_grads.push(gate.map_err(in_layer(ctx))?);
        }
        let gate_grads = Tensor::f_stack(&gate_grads, 0).map_err(in_layer(ctx))?;

        // The softmax runs after the candidates, as in NNI, so a stochastic one (GumbelSoftmax)
        // draws the same random numbers.
        let probs = ctx.softmax.bind(py).call1((alpha_obj,))?;
        let probs = tree::expect_tensor(&probs, "softmax(arch_alpha)")?;
        let mut alpha_grad = alpha.grad();
        if !alpha_grad.defined() {
            alpha_grad = alpha.f_zeros_like().map_err(in_layer(ctx))?;
            alpha_obj.setattr("grad", tree::to_python(py, &alpha_grad)?)?;
        }
        kernel::accumulate_alpha_grad(&mut alpha_grad, &probs, &gate_grads).map_err(in_layer(ctx))
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> (Bound<'py, PyAny>, (Py<ProxylessContext>,)) {
        (py.get_type::<Self>().into_any(), (self.ctx.clone_ref(py),))
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.ctx)
    }
}
