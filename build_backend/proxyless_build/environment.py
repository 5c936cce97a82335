"""Which torch a build sees, and the environment cargo builds in."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .span import Release


def installed_torch() -> tuple[str, Path] | None:
    """(version, package directory) of the torch importable here, without importing it."""
    try:
        version = importlib.metadata.version('torch')
    except importlib.metadata.PackageNotFoundError:
        return None
    spec = importlib.util.find_spec('torch')
    if spec is None or not spec.submodule_search_locations:
        return None
    return version, Path(list(spec.submodule_search_locations)[0])


def target_environment_torch() -> str | None:
    """The torch version of the environment pip installs into, seen from an isolated build.

    pip runs the hooks of an isolated build with the target environment's interpreter and hides
    its site-packages behind PYTHONPATH / PYTHONNOUSERSITE; without those the interpreter sees
    them again. Other frontends (``python -m build``, uv) build in a venv of their own: None.
    """
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONNOUSERSITE', 'PYTHONHOME')}
    script = 'import importlib.metadata as m; print(m.version("torch"))'
    try:
        out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


@contextlib.contextmanager
def build_environment(torch: tuple[str, Path], entry: Release, target: Path) -> Iterator[None]:
    """The environment of the cargo build: libtorch from this torch package, found through this
    interpreter."""
    version, torch_dir = torch
    saved = dict(os.environ)
    wrappers = Path(tempfile.mkdtemp(prefix='proxyless-rs-python-'))
    try:
        # torch-sys runs `python` (in a venv) or `python3` to locate libtorch, and build.rs asks
        # PYO3_PYTHON (set by maturin) for the version: make both this interpreter, which sees the
        # build environment's torch (through PYTHONPATH, in an isolated build).
        for name in ('python', 'python3'):
            wrapper = wrappers / name
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
            wrapper.chmod(0o755)
        path = [str(wrappers), str(Path(sys.executable).parent), os.environ.get('PATH', '')]
        os.environ['PATH'] = os.pathsep.join(path)
        # torch-sys reads LIBTORCH_USE_PYTORCH as a flag but reruns its build script when the
        # value changes: the torch directory as value relinks against a moved or other torch.
        os.environ['LIBTORCH_USE_PYTORCH'] = str(torch_dir)
        if version.split('+')[0] != entry.generated:
            # torch-sys insists on the exact release its bindings were generated from (2.7.0);
            # the ops they bind are the same in the releases torch-span.toml pairs it with.
            os.environ['LIBTORCH_BYPASS_VERSION_CHECK'] = '1'
        os.environ['CARGO_TARGET_DIR'] = str(target)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(wrappers, ignore_errors=True)
