"""The wheel's platform tag: manylinux, as its symbols allow, without torch's libraries."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .span import BuildError

# Libraries of the torch package: linked, never copied into the wheel (found at run time in the
# installed torch package, through the RUNPATH `$ORIGIN/../torch/lib` that build.rs sets).
TORCH_LIBRARIES = ('libtorch*.so*', 'libc10*.so*', 'libshm*.so*', 'libgomp*.so*')


def retag(wheel_directory: str, filename: str) -> str:
    """The manylinux tag the wheel's symbol versions allow, the torch libraries excluded, when
    auditwheel is installed; else as built."""
    if not sys.platform.startswith('linux') or importlib.util.find_spec('auditwheel') is None:
        print('proxyless-rs: auditwheel is not installed; the wheel keeps its linux tag', flush=True)
        return filename
    wheel = Path(wheel_directory) / filename
    with tempfile.TemporaryDirectory(prefix='proxyless-rs-wheel-') as out:
        excludes = [arg for pattern in TORCH_LIBRARIES for arg in ('--exclude', pattern)]
        result = subprocess.run(
            [sys.executable, '-m', 'auditwheel', 'repair', str(wheel), '--wheel-dir', out, *excludes],
            capture_output=True,
            text=True,
        )
        repaired = list(Path(out).glob('*.whl'))
        if result.returncode != 0 or len(repaired) != 1:
            sys.stderr.write(result.stdout + result.stderr)
            raise BuildError('proxyless-rs: auditwheel could not give the wheel a manylinux tag (output above)')
        shutil.move(str(repaired[0]), Path(wheel_directory) / repaired[0].name)
        if repaired[0].name != filename:
            wheel.unlink()
        print(f'proxyless-rs: {repaired[0].name} (auditwheel repair, torch libraries excluded)', flush=True)
        return repaired[0].name
