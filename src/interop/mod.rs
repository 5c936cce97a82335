//! Where the core meets torch and CPython: tensor trees crossing zero-copy, the raw vectorcall
//! of a candidate, what the core reads of autograd's state (the private parts in one place), and
//! the torch release the core was built against. Depends on nothing else of the crate but
//! `crate::errors`.

/// What the core reads of autograd's state (grad mode, torch's private queries).
pub mod autograd_state;
/// A candidate called without the Python frames that do nothing (plain lookup, hook-free call).
pub mod module_call;
/// The raw CPython call of a candidate.
pub mod py_vectorcall;
/// The torch release this extension was built against, checked against the one loaded.
pub mod torch_version;
/// Tensor trees: detach, checks, containers rebuilt, zero-copy crossing (`PyTensor`).
pub mod tree;
