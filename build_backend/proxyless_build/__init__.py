"""PEP 517 build backend of proxyless-rs: maturin, built against the torch it finds.

The compiled core binds libtorch's C++ API through tch / torch-sys, and each tch release is
generated against one torch release. Cargo cannot hold several in one build (torch-sys declares
``links = "tch"``), so ``Cargo.toml`` accepts the whole span and this backend builds each torch
with the release torch-span.toml names for it:

1. It reads the torch of the build environment (``pip install --no-build-isolation .``: yours;
   an isolated ``pip install .``: the same release as the environment being installed into, see
   ``get_requires_for_build_wheel``). A torch outside the span stops the build before anything is
   built or installed, with what to do.
2. It builds in a stage beside the cargo build (``stage.py``): a copy of the source with tch
   pinned in its Cargo.lock, torch-sys patched where torch-span.toml says so
   (``torch_sys_patch.py``), and the version ``0.1.0+torch<release>``.
3. It runs maturin's own PEP 517 hooks there, with libtorch taken from that torch package
   (``environment.py``), then gives the wheel its manylinux tag (``wheel.py``).

The wheel requires no torch (its ``torch`` extra names the release it was built for), so installing
it never replaces the torch of an environment; under another torch it refuses to import and says
which wheel or build fits. ``python -m proxyless_build`` (from build_backend/) prints the span.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from .environment import build_environment, installed_torch, target_environment_torch
from .span import NEWEST, SPAN, BuildError, Release, describe, pinned_requirement, release, release_for
from .stage import locked, make_stage, pin_lock, target_dir
from .wheel import retag

__all__ = [
    'BuildError',
    'SPAN',
    'build_editable',
    'build_sdist',
    'build_wheel',
    'get_requires_for_build_editable',
    'get_requires_for_build_sdist',
    'get_requires_for_build_wheel',
    'prepare_metadata_for_build_editable',
    'prepare_metadata_for_build_wheel',
]

# Imported by the hooks only, so that the span and the helpers can be used (and tested) in an
# environment without maturin.
_MATURIN = None


def _maturin():
    global _MATURIN
    if _MATURIN is None:
        import maturin

        _MATURIN = maturin
    return _MATURIN


def _maturin_args(config_settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """config_settings for maturin: release build, the tag left to ``retag``."""
    settings = dict(config_settings or {})
    args = _maturin().get_maturin_pep517_args(config_settings)
    if '--compatibility' not in args and '--manylinux' not in args:
        args += ['--compatibility', 'linux']
    if not any(a.startswith('--auditwheel') for a in args):
        args += ['--auditwheel', 'skip']
    settings['maturin.build-args'] = args
    return settings


def _torch_or_fail() -> tuple[tuple[str, Path], Release]:
    torch = installed_torch()
    if torch is None:
        raise BuildError(
            'proxyless-rs builds against the torch installed in the build environment, and there is none. '
            f'Install torch ({describe()}) first, or build in isolation (`pip install .` without '
            '--no-build-isolation), which builds against the torch of the environment it installs into.'
        )
    return torch, release_for(torch[0], f'the build environment ({torch[1]})')


@contextlib.contextmanager
def _in_stage() -> Iterator[None]:
    source = Path.cwd()
    torch, entry = _torch_or_fail()
    target = target_dir(source, entry.torch)
    stage_dir = target / 'proxyless-rs-stage'
    with locked(target / 'proxyless-rs-stage.lock'):
        make_stage(source, stage_dir, entry, target)
        patch = f', torch-sys patched ({entry.patch})' if entry.patch else ''
        print(
            f'proxyless-rs: building against torch {torch[0]} ({torch[1]}) with tch {entry.tch}{patch}, in {stage_dir}',
            flush=True,
        )
        with build_environment(torch, entry, target):
            os.chdir(stage_dir)
            try:
                yield
            finally:
                os.chdir(source)


# --- PEP 517 hooks ----------------------------------------------------------------------------


def get_requires_for_build_wheel(config_settings: Mapping[str, Any] | None = None) -> list[str]:
    requires = list(_maturin().get_requires_for_build_wheel(config_settings))
    if installed_torch() is None:
        # An isolated build. Build against the release of the environment being installed into
        # (pip lets us see it), so that the wheel fits the torch there, which stays as it is; a
        # torch outside the span stops here, before pip installs anything. An environment without
        # torch, or a frontend that hides it (`python -m build`), gets the newest release.
        theirs = target_environment_torch()
        if theirs is not None:
            release_for(theirs, 'the environment being installed into')
            requires.append(f'torch=={theirs.split("+")[0]}')
        else:
            requires.append(pinned_requirement(NEWEST))
    return requires


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Mapping[str, Any] | None = None) -> str:
    metadata_directory = os.path.abspath(metadata_directory)
    with _in_stage():
        return _maturin().prepare_metadata_for_build_wheel(metadata_directory, _maturin_args(config_settings))


def build_wheel(
    wheel_directory: str, config_settings: Mapping[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    wheel_directory = os.path.abspath(wheel_directory)
    metadata_directory = os.path.abspath(metadata_directory) if metadata_directory else None
    with _in_stage():
        filename = _maturin().build_wheel(wheel_directory, _maturin_args(config_settings), metadata_directory)
        return retag(wheel_directory, filename)


def get_requires_for_build_sdist(config_settings: Mapping[str, Any] | None = None) -> list[str]:
    return list(_maturin().get_requires_for_build_sdist(config_settings))


def build_sdist(sdist_directory: str, config_settings: Mapping[str, Any] | None = None) -> str:
    # The sdist carries torch-span.toml and this backend; a wheel built from it goes through
    # build_wheel above.
    return _maturin().build_sdist(sdist_directory, config_settings)


# Editable installs build in place (maturin puts the compiled core into python/proxyless_rs/):
# the checkout's Cargo.lock is pinned for this torch and left so, for later cargo commands. A
# release with a torch-sys patch builds from the stage only (`pip install .`).
get_requires_for_build_editable = get_requires_for_build_wheel


def _editable_entry() -> tuple[tuple[str, Path], Release]:
    torch, entry = _torch_or_fail()
    if entry.patch:
        raise BuildError(
            f'proxyless-rs: torch {entry.torch} builds with a patched torch-sys, which an editable install cannot '
            'use (it builds in your checkout); use `pip install --no-build-isolation .`'
        )
    if pin_lock(Path.cwd(), entry.tch):
        print(f'proxyless-rs: Cargo.lock pinned to tch {entry.tch} (torch {entry.torch})', flush=True)
    return torch, entry


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: Mapping[str, Any] | None = None
) -> str:
    _editable_entry()
    return _maturin().prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(
    wheel_directory: str, config_settings: Mapping[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    torch, entry = _editable_entry()
    target = Path(os.environ.get('CARGO_TARGET_DIR') or Path.cwd() / 'target')
    with build_environment(torch, entry, target):
        return _maturin().build_editable(wheel_directory, config_settings, metadata_directory)


def main() -> int:
    print('torch  tch     generated  tested   patch')
    for entry in SPAN.values():
        print(f'{entry.torch:<6} {entry.tch:<7} {entry.generated:<10} {entry.tested:<8} {entry.patch or ""}')
    print(f'span: torch {describe()}')
    return 0


__all__ += ['main', 'release']
