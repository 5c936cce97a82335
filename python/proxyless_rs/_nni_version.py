"""Which NNI is installed: proxyless_rs serves NNI 2.10 and NNI 3.0 workflows from one package.

Read from the package metadata, so that asking does not import NNI (importing proxyless_rs stays
lean).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _major() -> int:
    try:
        return int(version('nni').split('.')[0])
    except (PackageNotFoundError, ValueError):
        return 0


NNI_MAJOR = _major()
"""3 under NNI 3.x, 2 under NNI 2.x, 0 without NNI."""

NNI3 = NNI_MAJOR >= 3
