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
/// `torch._C._autograd._get_current_graph_task_keep_graph`; `None` where torch has no such query
/// (torch 2.0): then the gradient tap asks autograd at the end of the backward (see
/// `choice::tap`), by whether the node's saved tensors were freed.
pub fn backward_keeps_graph(py: Python<'_>) -> PyResult<Option<bool>> {
    match keep_graph_query(py) {
        Some(query) => Ok(Some(query.call0(py)?.extract(py)?)),
        None => Ok(None),
    }
}

/// Whether torch can say whether a backward keeps its graph (see [`backward_keeps_graph`]).
pub fn keep_graph_known(py: Python<'_>) -> bool {
    keep_graph_query(py).is_some()
}

fn keep_graph_query(py: Python<'_>) -> Option<PyObject> {
    static KEEP_GRAPH: GILOnceCell<Option<PyObject>> = GILOnceCell::new();
    private_function(py, &KEEP_GRAPH, "torch._C._autograd", "_get_current_graph_task_keep_graph")
}

/// Runs `callback` when the running backward ends (autograd's engine's final callbacks, which
/// every torch of the span has: `Variable._execution_engine.queue_callback`).
pub fn at_backward_end(py: Python<'_>, callback: Bound<'_, PyAny>) -> PyResult<()> {
    static ENGINE: GILOnceCell<PyObject> = GILOnceCell::new();
    let engine = ENGINE.get_or_try_init(py, || -> PyResult<PyObject> {
        Ok(py.import("torch.autograd")?.getattr("Variable")?.getattr("_execution_engine")?.unbind())
    })?;
    engine.bind(py).call_method1("queue_callback", (callback,))?;
    Ok(())
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
