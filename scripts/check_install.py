"""After `pip install --no-build-isolation .`: torch is still the release asked for, and the
installed proxyless-rs records it (version +torch<release>, no torch requirement but its `torch`
extra pinned to that release, the compiled core's marker) and imports.

    python scripts/check_install.py 2.7.1
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys


def main(expected_torch: str) -> int:
    torch_version = metadata.version('torch')
    release = '.'.join(expected_torch.split('.')[:2])
    problems = []
    if torch_version.split('+')[0] != expected_torch:
        problems.append(f'torch is {torch_version}, expected {expected_torch}: the install replaced it')
    version = metadata.version('proxyless-rs')
    if not version.endswith(f'+torch{release}'):
        problems.append(f'proxyless-rs {version} does not record torch {release}')
    requires = [r for r in metadata.requires('proxyless-rs') or [] if re.match(r'torch\b', r)]
    major, minor = release.split('.')
    wanted = rf'torch\s*>={re.escape(release)},<{major}\.{int(minor) + 1}\s*;\s*extra\s*==\s*["\']torch["\']'
    if len(requires) != 1 or not re.fullmatch(wanted, requires[0]):
        problems.append(f'proxyless-rs requires {requires}, expected torch {release} in its `torch` extra only')

    import torch

    import proxyless_rs
    from proxyless_rs import _core

    if not _core.TORCH_VERSION.startswith(expected_torch):
        problems.append(f'the compiled core was built against torch {_core.TORCH_VERSION}')
    location = proxyless_rs.__file__
    print(f'torch {torch.__version__}; proxyless-rs {version} from {location}; requires {requires}; '
          f'core built against torch {_core.TORCH_VERSION}')
    for problem in problems:
        print('check_install:', problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
