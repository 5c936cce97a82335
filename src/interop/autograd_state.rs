//! What the core reads of autograd's state: grad mode (public), and the private parts of torch's
//! autograd API it relies on, in one place: a torch release that changes them breaks here
//! (tests/test_contract.py checks both behaviours).

use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;

fn private_function(
    py: Python<'_>,
    cell: &'static GILOnceCell<Option<PyObject>>,
    module: &str,
    name: &str,
) -> Option<PyObject> {
    cell.get_or_init(py, || py.import(module).and_then(|m| m.getattr(name)).map(Bound::unbind).ok())
        .as_ref()
        .map(|f| f.clone_ref(py))
}

/// Whether the running backward keeps its graph (`retain_graph=True`), from
/// `torch._C._autograd._get_current_graph_task_keep_graph` (torch 2.1 on). Without it (torch 2.0)
/// the answer is yes: a call's saved state is then freed with the graph instead of by the backward.
pub fn backward_keeps_graph(py: Python<'_>) -> PyResult<bool> {
    static KEEP_GRAPH: GILOnceCell<Option<PyObject>> = GILOnceCell::new();
    match private_function(py, &KEEP_GRAPH, "torch._C._autograd", "_get_current_graph_task_keep_graph") {
        Some(query) => query.call0(py)?.extract(py),
        None => Ok(true),
    }
}

/// Whether the running backward will execute `node` (an autograd graph node), from
/// `torch._C._will_engine_execute_node` (every torch of the span): false under
/// `torch.autograd.grad(loss, inputs)` for a node that leads to none of the inputs. Without it,
/// true (the work is done, and autograd drops what it does not need).
pub fn engine_will_execute(node: &Bound<'_, PyAny>) -> PyResult<bool> {
    static WILL_EXECUTE: GILOnceCell<Option<PyObject>> = GILOnceCell::new();
    let py = node.py();
    match private_function(py, &WILL_EXECUTE, "torch._C", "_will_engine_execute_node") {
        Some(query) => query.call1(py, (node,))?.extract(py),
        None => Ok(true),
    }
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
