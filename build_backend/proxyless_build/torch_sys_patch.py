"""torch-sys patched for a torch newer than every tch release (torch-span.toml, ``patch = ...``).

tch's newest release (0.26) was generated from torch 2.13. Against torch 2.14 and 2.15 its C++
wrapper fails to build in two ways, and only these two (measured on both releases):

* torch's headers need C++20, and torch-sys's build.rs hard-codes ``-std=c++17``;
* the generated wrapper (``libtch/torch_api_generated.cpp``) calls four ops that torch 2.14
  removed: ``torch::cholesky``, ``torch::cholesky_out``, ``torch::qr`` and ``torch::qr_out``.

Patch ``cxx20-removed-ops`` copies the registry's torch-sys into the build's target folder and
changes exactly that: the standard flag, and the body of each wrapper function that calls a removed
op, which now raises libtorch's usual error ("... was removed in torch 2.14") instead of calling it.
The C symbols stay, so tch's Rust bindings link unchanged; proxyless-rs calls none of the four.
Cargo builds the copy through ``[patch.crates-io]`` in the stage's Cargo.toml. Nothing outside
the target folder is modified, and each edit must match exactly where it is expected, or the
build stops with the file and the edit that did not apply.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from .span import BuildError

# The ops torch 2.14 removed from the C++ API that tch 0.26's generated wrapper still calls.
REMOVED_OPS = ('cholesky', 'cholesky_out', 'qr', 'qr_out')
PATCHES = ('cxx20-removed-ops',)


def crate_source(stage_dir: Path, crate: str, version: str) -> Path:
    """The registry source of ``crate`` at ``version``, as cargo resolves it for the stage
    (``cargo metadata`` downloads it when it is not yet in cargo's cache)."""
    out = subprocess.run(
        ['cargo', 'metadata', '--format-version', '1', '--manifest-path', str(stage_dir / 'Cargo.toml')],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise BuildError(f'proxyless-rs: cargo metadata failed in {stage_dir}:\n{out.stderr}')
    for package in json.loads(out.stdout)['packages']:
        if package['name'] == crate and package['version'] == version and package.get('source'):
            return Path(package['manifest_path']).parent
    raise BuildError(f'proxyless-rs: cargo metadata lists no registry {crate} {version} for {stage_dir}')


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) != 1:
        raise BuildError(f'proxyless-rs: torch-sys patch: expected {old!r} once in {path}, found {text.count(old)}')
    path.write_text(text.replace(old, new))


def _stub_removed_ops(generated: Path) -> list[str]:
    """Replaces the body of every wrapper function calling a removed op; returns their names."""
    text = generated.read_text()
    function = re.compile(r'^void (atg_\w+)\(([^)]*)\) \{\n  PROTECT\(\n(.*?)\n  \)\n\}\n', re.M | re.S)
    calls = re.compile(r'torch::(' + '|'.join(REMOVED_OPS) + r')\(')
    stubbed: list[str] = []

    def stub(match: re.Match[str]) -> str:
        called = calls.search(match.group(3))
        if called is None:
            return match.group(0)
        stubbed.append(match.group(1))
        message = f'torch::{called.group(1)} was removed in torch 2.14 (torch-sys patched by proxyless-rs)'
        body = f'  PROTECT(\n    throw std::runtime_error("{message}");\n  )\n'
        return f'void {match.group(1)}({match.group(2)}) {{\n{body}}}\n'

    patched = function.sub(stub, text)
    left = calls.findall(patched)
    if left or len(stubbed) != len(REMOVED_OPS):
        raise BuildError(
            f'proxyless-rs: torch-sys patch: stubbed {stubbed} in {generated}, expected one function per removed op '
            f'{REMOVED_OPS}; calls left: {left}'
        )
    generated.write_text(patched)
    return stubbed


def patched_dir(target: Path, version: str, patch: str) -> Path:
    return target / 'patched' / f'torch-sys-{version}-{patch}'


def is_patched(dest: Path, patch: str) -> bool:
    done = dest / '.proxyless-patch'
    return done.exists() and done.read_text() == patch


def apply_patch(stage_dir: Path, dest: Path, version: str, patch: str) -> None:
    """Makes ``dest`` the registry's torch-sys ``version`` (as the stage resolves it) with
    ``patch`` applied."""
    if patch not in PATCHES:
        raise BuildError(f'proxyless-rs: torch-span.toml names an unknown torch-sys patch {patch!r} ({PATCHES})')
    source = crate_source(stage_dir, 'torch-sys', version)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)
    _replace_once(dest / 'build.rs', '.flag("-std=c++17")', '.flag("-std=c++20")')
    _replace_once(dest / 'build.rs', '.flag("/std:c++17")', '.flag("/std:c++20")')
    stubbed = _stub_removed_ops(dest / 'libtch' / 'torch_api_generated.cpp')
    # A path dependency now: cargo reads no registry markers from it.
    (dest / '.cargo-ok').unlink(missing_ok=True)
    (dest / '.cargo_vcs_info.json').unlink(missing_ok=True)
    (dest / '.proxyless-patch').write_text(patch)
    print(f'proxyless-rs: torch-sys {version} patched ({patch}: -std=c++20, stubbed {", ".join(stubbed)}) in {dest}')
