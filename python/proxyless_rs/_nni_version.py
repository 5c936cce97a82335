"""Which NNI is installed: proxyless_rs serves NNI 2.10 and NNI 3.0 workflows from one package.

Read from the package metadata, so that asking does not import NNI (importing proxyless_rs stays
lean).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _major() -> int:
    try:
        installed = version('nni')
    except PackageNotFoundError:
        return 0
    major = installed.split('.')[0]
    if not major.isdigit():
        raise ImportError(f'proxyless_rs serves NNI 2.10 and NNI 3.0, and cannot read the version of the '
                          f'installed NNI: {installed!r}')
    return int(major)


NNI_MAJOR = _major()
"""3 under NNI 3.x, 2 under NNI 2.x, 0 without NNI."""

NNI3 = NNI_MAJOR >= 3

NNI_NAME = {2: 'NNI 2.10', 3: 'NNI 3.0'}.get(NNI_MAJOR)
"""The NNI version proxyless_rs serves here, as checkpoints record it; None without NNI."""
