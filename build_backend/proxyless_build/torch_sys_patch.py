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

The edits are pinned at both ends: each file they touch must hold the exact bytes of the registry's
release before (sha256) and the exact reviewed bytes after (``REVIEWED``), or the build stops naming
the file. The reviewed change itself is committed beside this module as a unified diff
(``torch-sys-<release>-<patch>.diff``; tests/test_build_backend.py checks the edits still make it).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

from .span import BuildError

# The ops torch 2.14 removed from the C++ API that tch 0.26's generated wrapper still calls.
REMOVED_OPS = ('cholesky', 'cholesky_out', 'qr', 'qr_out')
PATCHES = ('cxx20-removed-ops',)

# (torch-sys release, patch) -> {file: (sha256 of the registry's bytes, sha256 of the patched bytes)}.
REVIEWED = {
    ('0.26.0', 'cxx20-removed-ops'): {
        'build.rs': ('d520a8ba62620cff8768113ab13e25e909a11adde8058e0d90acb3e7484b7eb9',
                     '6e90fc0bbf1eb26cc3c65f6f141853d247902289a82011dc175b366bfb293739'),
        'libtch/torch_api_generated.cpp': ('d833ea5381c09ee20e0d156b9ad2429995fbc6f9af4e16674c01c0ab8ed4e72b',
                                           'e964d6b2c5fdcf7808ab0968e9ae74cdca1cae9bd732ab01d5d97bbb88a4d55d'),
    },
}


def reviewed_diff(version: str, patch: str) -> Path:
    """The committed unified diff of ``patch`` on torch-sys ``version``: what the edits make."""
    return Path(__file__).with_name(f'torch-sys-{version}-{patch}.diff')


def _check_bytes(root: Path, version: str, patch: str, stage: int) -> None:
    """Each file of the patch holds the bytes it must before (``stage`` 0) or after (1) the edits."""
    files = REVIEWED.get((version, patch))
    if files is None:
        raise BuildError(f'proxyless-rs: torch-sys patch {patch!r} has no reviewed result for torch-sys {version} '
                         f'(REVIEWED in {__file__})')
    for name, digests in files.items():
        got = hashlib.sha256((root / name).read_bytes()).hexdigest()
        if got != digests[stage]:
            what = 'the registry\'s torch-sys' if stage == 0 else 'the reviewed result'
            raise BuildError(f'proxyless-rs: torch-sys patch {patch!r}: {root / name} is not {what} {version} '
                             f'(sha256 {got}, expected {digests[stage]}); nothing was built from it')


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
    patch_copy(source, dest, version, patch)
    stubbed = ', '.join(REMOVED_OPS)
    print(f'proxyless-rs: torch-sys {version} patched ({patch}: -std=c++20, stubbed {stubbed}) in {dest}')


def patch_copy(source: Path, dest: Path, version: str, patch: str) -> None:
    """``dest``: a copy of torch-sys ``version``'s sources at ``source`` with ``patch`` applied,
    checked at both ends against ``REVIEWED``."""
    _check_bytes(source, version, patch, 0)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)
    _replace_once(dest / 'build.rs', '.flag("-std=c++17")', '.flag("-std=c++20")')
    _replace_once(dest / 'build.rs', '.flag("/std:c++17")', '.flag("/std:c++20")')
    _stub_removed_ops(dest / 'libtch' / 'torch_api_generated.cpp')
    _check_bytes(dest, version, patch, 1)
    # A path dependency now: cargo reads no registry markers from it.
    (dest / '.cargo-ok').unlink(missing_ok=True)
    (dest / '.cargo_vcs_info.json').unlink(missing_ok=True)
    (dest / '.proxyless-patch').write_text(patch)
