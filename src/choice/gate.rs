//! The binary-gate backward of one saved call: the other candidates evaluated on the call's
//! saved inputs, each gate's gradient `sum(out_k * grad_output)`, and alpha's gradient in closed
//! form.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use tch::Tensor;

use crate::choice::saved_call::SavedCall;
use crate::choice::Choice;
use crate::errors::in_context;
use crate::interop::module_call::call_alternative;
use crate::{arch::gradient, interop::tree};

/// Says where an exception raised by a candidate came from: a note (Python 3.11+), or, where
/// exceptions have no notes (3.9, 3.10), the same text appended to a one-string message.
fn with_note(py: Python<'_>, err: PyErr, note: String) -> PyErr {
    let value = err.value(py);
    if value.hasattr(intern!(py, "add_note")).unwrap_or(false)
        && value.call_method1(intern!(py, "add_note"), (&note,)).is_ok()
    {
        return err;
    }
    if let Ok(args) = value.getattr(intern!(py, "args")).and_then(|args| args.extract::<(String,)>()) {
        let extended = PyTuple::new(py, [format!("{}\n{note}", args.0)]);
        if extended.and_then(|args| value.setattr(intern!(py, "args"), args)).is_ok() {
            return err;
        }
    }
    err
}

/// The elements of candidate `k`'s output, checked against the sampled candidate's structure.
fn candidate_output(
    choice: &Choice,
    call: &SavedCall,
    k: i64,
    out: &Bound<'_, PyAny>,
    grads: &[Option<Tensor>],
) -> PyResult<Vec<Option<Tensor>>> {
    let describe = || format!("{}: {}", choice.name, choice.describe_alternative(out.py(), k));
    let (_, output) = tree::output_tensors(out, &describe)?;
    let sampled = call.output();
    if output.keys != sampled.keys || output.tensors.len() != sampled.tensors.len() {
        return Err(PyValueError::new_err(format!(
            "{} returned {}, but the sampled candidate returned {}; all candidates must return the same structure",
            describe(),
            output.describe(),
            sampled.describe()
        )));
    }
    for (i, grad) in grads.iter().enumerate() {
        if let (Some(_), Some(other)) = (grad, &output.others[i]) {
            return Err(PyTypeError::new_err(format!(
                "{} returned {other} at element {i}, where the sampled candidate returned a tensor that received a \
                 gradient; the binary gate needs a tensor (or None) there",
                describe()
            )));
        }
    }
    Ok(output.tensors)
}

/// The binary-gate gradient of alpha for one call.
///
/// `grads` holds one entry per output element of the layer (`None` where no gradient flowed).
/// The other alternatives are evaluated on the saved inputs through `alternatives` (under
/// `no_grad`, in index order, so random ops draw what NNI's hook draws), each gate's gradient is
/// `sum(out_k * grad_output)`, and the closed form gives alpha's gradient, in alpha's dtype and on
/// its device: no host round trip. Autograd adds it into `alpha.grad`, so gradients from other
/// losses on alpha add up.
pub fn backward(
    choice: &Choice,
    alternatives: &Bound<'_, PyAny>,
    call: &SavedCall,
    grads: &[Option<Tensor>],
) -> PyResult<Tensor> {
    let py = alternatives.py();
    let output_intact = call.check_unmodified(py, &choice.name)?;
    let alpha = tree::expect_tensor(call.alpha(py), "arch_alpha")?;
    let options = (alpha.kind(), alpha.device());
    let n_candidates = alpha.size().first().copied().unwrap_or(0);
    let in_layer = in_context(&choice.name);

    let _no_grad = tch::no_grad_guard();
    let (args, kwargs) = (call.args(py), call.kwargs(py));
    let sample_idx = call.sample_idx();
    // Full mode evaluates every candidate; two-path mode the sampled one and its partner only.
    let involved: Vec<i64> = match call.partner() {
        Some(partner) => vec![sample_idx, partner],
        None => (0..n_candidates).collect(),
    };
    // Small outputs are kept and reduced together at the end; large ones are reduced as soon as
    // each is computed (see gradient::BATCH_NUMEL_LIMIT).
    let batch = gradient::batchable(grads);
    let mut kept = Vec::new();
    let mut gates = Vec::new();
    for &k in &involved {
        let out = if k == sample_idx && output_intact {
            call.output().tensors.iter().map(|t| t.as_ref().map(Tensor::shallow_clone)).collect()
        } else {
            let out = call_alternative(alternatives, k, args, kwargs).map_err(|err| {
                let note = format!(
                    "(raised by {} of {}, evaluated in the binary-gate backward)",
                    choice.describe_alternative(py, k),
                    choice.name
                );
                with_note(py, err, note)
            })?;
            candidate_output(choice, call, k, &out, grads)?
        };
        if batch {
            kept.push(out);
        } else {
            gates.push(gradient::binary_gate_grad(&out, grads).map_err(&in_layer)?);
        }
    }
    let gate_grads =
        if batch { gradient::binary_gate_grads(&kept, grads) } else { gradient::stack_gate_grads(gates, grads) }
            .and_then(|b| if b.kind() == options.0 { Ok(b) } else { b.f_to_kind(options.0) })
            .and_then(|b| if b.device() == options.1 { Ok(b) } else { b.f_to_device(options.1) })
            .map_err(&in_layer)?;

    // The softmax runs after the candidates, as in NNI, so a stochastic one (GumbelSoftmax)
    // draws the same random numbers.
    let delta = match call.partner() {
        Some(_) => {
            let probs = choice.probs_of(py, &gradient::gather(&alpha, &involved).map_err(&in_layer)?)?;
            gradient::subset_alpha_grad_like(&alpha, &involved, &probs, &gate_grads)
        }
        None => gradient::alpha_grad_like(&alpha, &choice.probs_of(py, &alpha)?, &gate_grads),
    }
    .map_err(&in_layer)?;
    choice.arch(py).get().run_after_backward(py)?;
    Ok(delta)
}
