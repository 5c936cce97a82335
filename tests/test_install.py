"""Installing into an environment whose torch is outside the span: the install fails before it
changes anything, says why and what works, and that torch stays as it was.

The environment is a fresh venv holding a fake torch 1.13.1 (its metadata and a module: pip and
the build backend see an installed torch 1.13.1, nothing can import libtorch from it). pip runs
the real build backend from this checkout, in isolation (it fetches maturin from the index or its
cache for that) and without.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_TORCH = '1.13.1'


@pytest.fixture(scope='module')
def fake_torch_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp('fake-torch') / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    python = venv / 'bin' / 'python'
    site = Path(subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                               check=True, capture_output=True, text=True).stdout.strip())
    assert site != Path(sysconfig.get_paths()['purelib'])
    (site / 'torch').mkdir()
    (site / 'torch' / '__init__.py').write_text(f'__version__ = {FAKE_TORCH!r}\n')
    info = site / f'torch-{FAKE_TORCH}.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: torch\nVersion: {FAKE_TORCH}\n')
    (info / 'RECORD').write_text('torch/__init__.py,,\n')
    return venv


def torch_of(venv: Path) -> str:
    script = 'import importlib.metadata as m; print(m.version("torch"))'
    return subprocess.run([str(venv / 'bin' / 'python'), '-c', script], check=True, capture_output=True,
                          text=True).stdout.strip()


def pip_install(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / 'bin' / 'python'), '-m', 'pip', 'install', '--disable-pip-version-check',
                           *args, str(ROOT)], capture_output=True, text=True, timeout=600)


def assert_refused(result: subprocess.CompletedProcess, venv: Path, where: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert re.search(rf'{where}( \([^)]*\))? holds torch {re.escape(FAKE_TORCH)}', output), output
    assert 'proxyless-rs builds against torch 2.0 to 2.15' in output
    assert 'pip install --no-build-isolation .' in output
    assert 'Successfully installed' not in output
    assert torch_of(venv) == FAKE_TORCH
    listed = subprocess.run([str(venv / 'bin' / 'python'), '-m', 'pip', 'list', '--format=freeze'],
                            capture_output=True, text=True).stdout
    assert 'proxyless' not in listed.lower() and 'nvidia' not in listed.lower(), listed


def test_isolated_install_fails_before_changing_the_torch(fake_torch_venv):
    result = pip_install(fake_torch_venv)
    assert_refused(result, fake_torch_venv, 'the environment being installed into')


def test_install_without_isolation_fails_before_changing_the_torch(fake_torch_venv):
    result = pip_install(fake_torch_venv, '--no-build-isolation', '--no-deps')
    assert_refused(result, fake_torch_venv, 'the build environment')
