//! Records the torch release the extension is built against, for the import-time check.
//!
//! torch-sys links the libtorch of the Python `torch` package (LIBTORCH_USE_PYTORCH=1); this asks
//! the same interpreter for its version, so a wheel knows which torch it needs at run time.
//!
//! It also gives the extension the RUNPATH `$ORIGIN/../torch/lib`: installed, the extension is
//! `site-packages/proxyless_rs/_core*.so` and libtorch is in `site-packages/torch/lib`, so the
//! wheel finds the libtorch of the installed torch package and carries none of its own.

use std::process::Command;

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
    }
    for var in ["PYO3_PYTHON", "PYTHON_SYS_EXECUTABLE", "VIRTUAL_ENV", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let candidates: Vec<String> = ["PYO3_PYTHON", "PYTHON_SYS_EXECUTABLE"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .chain(["python3".to_owned(), "python".to_owned()])
        .collect();
    let script = "import os, torch; print(torch.__version__); print(os.path.join(os.path.dirname(torch.__file__), 'version.py'))";
    for python in candidates {
        let Ok(output) = Command::new(&python).args(["-c", script]).output() else { continue };
        if !output.status.success() {
            continue;
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut lines = stdout.lines();
        if let (Some(version), Some(version_file)) = (lines.next(), lines.next()) {
            println!("cargo:rustc-env=PROXYLESS_TORCH_VERSION={}", version.trim());
            println!("cargo:rerun-if-changed={}", version_file.trim());
            return;
        }
    }
    panic!("proxyless-rs: could not import torch from PYO3_PYTHON, PYTHON_SYS_EXECUTABLE, python3 or python");
}
