//! What the unit tests share.

use std::sync::{Mutex, MutexGuard};

/// Held by each test that seeds libtorch's default generator and compares what it draws after:
/// cargo runs tests on several threads, all drawing from that one generator.
static GENERATOR: Mutex<()> = Mutex::new(());

/// The generator, held, and seeded with `seed`.
pub fn seeded(seed: i64) -> MutexGuard<'static, ()> {
    let guard = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed);
    guard
}
