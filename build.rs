//! Records the torch release the extension is built against, and the span of releases
//! proxyless-rs builds against (torch-span.toml), for the import-time check and its messages.
//!
//! torch-sys links the libtorch of the Python `torch` package (LIBTORCH_USE_PYTORCH=1); this asks
//! the same interpreter for its version, so a wheel knows which torch it needs at run time.
//!
//! It also gives the extension the RUNPATH `$ORIGIN/../torch/lib`: installed, the extension is
//! `site-packages/proxyless_rs/_core*.so` and libtorch is in `site-packages/torch/lib`, so the
//! wheel finds the libtorch of the installed torch package and carries none of its own.

use std::process::Command;

/// The torch minors of torch-span.toml (`torch = "2.0"` lines), as ranges of consecutive minors:
/// "2.0 to 2.15". Read line by line: the file is ours and flat, and a TOML parser would be a
/// build dependency for one list.
fn span_text() -> String {
    println!("cargo:rerun-if-changed=torch-span.toml");
    let text = std::fs::read_to_string("torch-span.toml").expect("proxyless-rs: torch-span.toml is missing");
    let mut minors: Vec<(u32, u32)> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("torch = \"")?.strip_suffix('"').map(str::to_owned))
        .map(|v| {
            let (major, minor) = v.split_once('.').expect("torch = \"major.minor\"");
            (major.parse().expect("major"), minor.parse().expect("minor"))
        })
        .collect();
    minors.sort();
    assert!(!minors.is_empty(), "proxyless-rs: torch-span.toml lists no release");
    let mut ranges: Vec<((u32, u32), (u32, u32))> = Vec::new();
    for m in minors {
        match ranges.last_mut() {
            Some((_, last)) if last.0 == m.0 && last.1 + 1 == m.1 => *last = m,
            _ => ranges.push((m, m)),
        }
    }
    let parts: Vec<String> = ranges
        .iter()
        .map(|(a, b)| if a == b { format!("{}.{}", a.0, a.1) } else { format!("{}.{} to {}.{}", a.0, a.1, b.0, b.1) })
        .collect();
    parts.join(", ")
}

fn main() {
    println!("cargo:rustc-env=PROXYLESS_TORCH_SPAN={}", span_text());
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
