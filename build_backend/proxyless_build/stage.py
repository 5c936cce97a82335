"""The stage: a copy of the source tree that maturin builds, pinned to one torch release.

Your checkout is never modified. The stage gets what maturin needs, with three changes:

* ``Cargo.lock``: tch and torch-sys at the release torch-span.toml names (``cargo update
  --precise``, which also moves what those two releases depend on, such as ndarray);
* ``Cargo.toml``: ``[patch.crates-io]`` with the patched torch-sys where the release has a patch;
* ``pyproject.toml``: the local version ``+torch<release>`` (the wheel's file name and ``pip list``
  say which torch it was built against) and the ``torch`` extra pinned to that release.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

from .span import BuildError, Release, pinned_requirement
from .torch_sys_patch import apply_patch, is_patched, patched_dir

# What maturin needs from the source tree (python/ without build products).
STAGED = (
    'Cargo.toml', 'Cargo.lock', 'build.rs', 'torch-span.toml', 'pyproject.toml', 'README.md', 'LICENSE', 'src',
    'python', '.cargo',
)
SKIPPED = re.compile(r'(__pycache__|\.pyc$|\.so$|\.pyd$|\.egg-info$)')


def sync(src: Path, dest: Path) -> None:
    """Makes ``dest`` a copy of ``src``, rewriting only files whose bytes differ (cargo decides
    what to rebuild by modification times)."""
    if src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        wanted = {p.name for p in src.iterdir() if not SKIPPED.search(p.name)}
        for name in wanted:
            sync(src / name, dest / name)
        for extra in dest.iterdir():
            if extra.name not in wanted:
                shutil.rmtree(extra) if extra.is_dir() and not extra.is_symlink() else extra.unlink()
    else:
        write_if_changed(dest, src.read_bytes())


def write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_dir():
        shutil.rmtree(path)
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


def locked_version(lock: str, crate: str) -> str | None:
    match = re.search(r'\[\[package\]\]\nname = "' + re.escape(crate) + r'"\nversion = "([^"]+)"', lock)
    return match.group(1) if match else None


def pin_lock(project: Path, tch: str) -> bool:
    """Pins ``project``'s Cargo.lock to tch ``tch`` (and the torch-sys it depends on); True if it
    changed."""
    lock = project / 'Cargo.lock'
    if locked_version(lock.read_text(), 'tch') == tch:
        return False
    out = subprocess.run(
        ['cargo', 'update', '--package', 'tch', '--precise', tch, '--manifest-path', str(project / 'Cargo.toml')],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0 or locked_version(lock.read_text(), 'tch') != tch:
        raise BuildError(f'proxyless-rs: could not pin tch {tch} in {lock}:\n{out.stderr}')
    return True


def pin_pyproject(text: str, torch_release: str) -> str:
    """The stage's pyproject.toml: version ``<version>+torch<release>``, the ``torch`` extra pinned
    to the release (the wheel itself requires no torch, so that installing it never replaces
    yours)."""
    local = f'+torch{torch_release}'
    out, n = re.subn(r'(?m)^(version = ")([^"+]+)"', lambda m: f'{m.group(1)}{m.group(2)}{local}"', text, count=1)
    if n != 1:
        raise BuildError('proxyless-rs: pyproject.toml has no static version')
    out, n = re.subn(r'(?m)^torch = \["torch"\]', f'torch = ["{pinned_requirement(torch_release)}"]', out, count=1)
    if n != 1:
        raise BuildError('proxyless-rs: pyproject.toml has no `torch = ["torch"]` extra')
    return out


def patch_manifest(text: str, torch_sys: Path) -> str:
    return text + f'\n[patch.crates-io]\ntorch-sys = {{ path = "{torch_sys.as_posix()}" }}\n'


def make_stage(source: Path, dest: Path, entry: Release, target: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in STAGED:
        if name not in ('Cargo.toml', 'Cargo.lock', 'pyproject.toml') and (source / name).exists():
            sync(source / name, dest / name)
    manifest = (source / 'Cargo.toml').read_text()
    if entry.patch:
        patched = patched_dir(target, entry.tch, entry.patch)
        if not is_patched(patched, entry.patch):
            write_if_changed(dest / 'Cargo.toml', manifest.encode())  # the registry's torch-sys, to copy
            apply_patch(dest, patched, entry.tch, entry.patch)
        manifest = patch_manifest(manifest, patched)
    write_if_changed(dest / 'Cargo.toml', manifest.encode())
    # The committed lock, pinned: redone only when the committed lock or the pin changed, so that
    # an unchanged stage keeps its lock as cargo left it.
    committed = (source / 'Cargo.lock').read_bytes()
    seed = dest / 'Cargo.lock.committed'
    if write_if_changed(seed, committed + f'\n# pinned: tch {entry.tch} {entry.patch}\n'.encode()):
        (dest / 'Cargo.lock').write_bytes(committed)
        pin_lock(dest, entry.tch)
    pyproject = pin_pyproject((source / 'pyproject.toml').read_text(), entry.torch)
    write_if_changed(dest / 'pyproject.toml', pyproject.encode())


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (two builds for one torch share a stage)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w') as handle:
        try:
            import fcntl
        except ImportError:  # not on Linux/macOS: no lock
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def target_dir(source: Path, torch_release: str) -> Path:
    """Where cargo builds: CARGO_TARGET_DIR if set, else one folder per torch release under
    target/ (a build for another torch does not undo this one's)."""
    if os.environ.get('CARGO_TARGET_DIR'):
        return Path(os.environ['CARGO_TARGET_DIR']).resolve()
    return source / 'target' / 'pep517' / f'torch-{torch_release}'
