"""PEP 517 build backend of proxyless-rs: maturin, built against the torch it finds.

The compiled core binds libtorch's C++ API through tch / pyo3-tch / torch-sys, and each release of
those is generated against one torch release. Cargo cannot hold several tch releases in one build
(torch-sys declares ``links = "tch"``), so ``Cargo.toml`` accepts the whole span of tch releases
and this backend chooses the one pair for the torch in the build environment:

1. It reads the torch release of the build environment (``pip install --no-build-isolation .``:
   the user's own torch; an isolated ``pip install .``: see ``get_requires_for_build_wheel``).
2. It copies what maturin needs (Cargo.toml, build.rs, src/, python/, pyproject.toml, ...) into a
   stage directory kept beside the cargo build, with ``Cargo.lock`` pinned to the tch /
   pyo3-tch / torch-sys release generated for that torch (only those three entries change), and
   the stage's ``pyproject.toml`` pinned to that torch release (``torch>=2.10,<2.11`` and the
   version ``0.1.0+torch2.10``): the wheel records what it was built against. Your checkout is
   never modified (except by ``build_editable``, which builds in place).
3. It runs maturin's own PEP 517 hooks there, with libtorch taken from that torch package
   (``LIBTORCH_USE_PYTORCH``), then, when ``auditwheel`` is installed, gives the wheel the
   manylinux tag its symbols allow, leaving libtorch out of it (it is found at run time in the
   installed torch package, through the RUNPATH ``$ORIGIN/../torch/lib`` that build.rs sets).

``python build_backend/proxyless_build.py`` prints the table; ``--pin-lock [RELEASE]`` pins the
checkout's Cargo.lock for the torch of the running interpreter (or RELEASE), for cargo commands
run by hand (clippy, cargo test) in an environment with another torch.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

# Imported lazily by the hooks, so that the table and the helpers can be used (and tested) in an
# environment without maturin.
_MATURIN = None


class Pair(NamedTuple):
    """The tch / pyo3-tch / torch-sys release generated against one torch release."""

    tch: str  # the version of all three crates
    torch: str  # the torch version torch-sys checks for, exactly (its build.rs: TORCH_VERSION)


# torch release -> the crates generated for it. torch-sys 0.21 and 0.25 were never published, so
# torch 2.8 and 2.12 have no tch release; 2.14 and 2.15 are newer than tch's newest (0.26).
# Claimed only where the test suite passes (README, "Supported torch versions").
SPAN: dict[str, Pair] = {
    '2.7': Pair('0.20.0', '2.7.0'),
    '2.9': Pair('0.22.0', '2.9.0'),
    '2.10': Pair('0.23.0', '2.10.0'),
    '2.11': Pair('0.24.0', '2.11.0'),
    '2.13': Pair('0.26.0', '2.13.0'),
}
OLDEST = '2.7'
NEWEST = '2.13'

# crates.io's sha256 of each crate file, as Cargo.lock records it.
CHECKSUMS: dict[tuple[str, str], str] = {
    ('tch', '0.20.0'): 'a760143efe7e4bb5b56e95d01f52ee6773bc315202e7c47db6a6429b0705a1f2',
    ('tch', '0.22.0'): '9e09b91610202dc4820c21eb474a42b386ef69f323b1c0902b5472ba7456ebb5',
    ('tch', '0.23.0'): '3d1470a4780300b4a62a097ed50dff2fc7c9cf6576c1947560a1d69fab3b258b',
    ('tch', '0.24.0'): '0d3f84a069d8ba16dbf720b61e8bf131d90ffb8e958a664eae8e4993c5c2fa6f',
    ('tch', '0.26.0'): '975b1fb3b612ba925f03dd08b56e5c9452bb7102891d5d9f58c19b49a0b2ec1e',
    ('torch-sys', '0.20.0'): 'ad6fa4ac5662b84047081375b007f102d4968d5a0191f567a9776294445af9ac',
    ('torch-sys', '0.22.0'): 'aef40c585e342df95b66a1fa7c923188623999c2b657227befb481dfb03a6a42',
    ('torch-sys', '0.23.0'): 'a7767541e63ff99c36950f2a54cc277e41a1e5a24ab1646aae19ef7f7d3dedf7',
    ('torch-sys', '0.24.0'): 'f4ba78777379cf09aaa79708c63e477cf0f95e021d04360c6821f1a9f56173f7',
    ('torch-sys', '0.26.0'): '5ae60ab95333c42adcc1a9e74057357e4324a1f344c403e48712a144ab731019',
    ('pyo3-tch', '0.20.0'): 'da2d7b3a5e0cac67319d03d3a2c145ed2c8d5b9e64cb10d3ef05bfc753ad1f4f',
    ('pyo3-tch', '0.22.0'): '6d350ca0c2d28e04a61fc3e9acb24a35013d6b0e36bf101897ac559583e6637e',
    ('pyo3-tch', '0.23.0'): '95011ac5109acbe3ee7400390ff5e621a9afd892b04f30be607393f2178ad5a3',
    ('pyo3-tch', '0.24.0'): '05939d191bc0233813b10dfefb7b85d63e16b3177e0bd0858677f17f83f16421',
    ('pyo3-tch', '0.26.0'): '0145151b8ed158c9946a7fc9787bfc7fd686502d381ae3ffcfce02006c9434d5',
}
CRATES = ('tch', 'torch-sys', 'pyo3-tch')

# What maturin needs from the source tree (python/ without build products).
STAGED = ('Cargo.toml', 'Cargo.lock', 'build.rs', 'pyproject.toml', 'README.md', 'src', 'python', '.cargo')
SKIPPED = re.compile(r'(__pycache__|\.pyc$|\.so$|\.pyd$|\.egg-info$)')

# Libraries of the torch package: linked, never copied into the wheel.
TORCH_LIBRARIES = ('libtorch*.so*', 'libc10*.so*', 'libshm*.so*', 'libgomp*.so*')


class BuildError(RuntimeError):
    pass


# --- torch ------------------------------------------------------------------------------------


def release(version: str) -> str:
    """``major.minor`` of a torch version (``2.7.1+cu126`` -> ``2.7``)."""
    match = re.match(r'(\d+)\.(\d+)', version)
    if not match:
        raise BuildError(f'proxyless-rs: cannot read the torch version {version!r}')
    return f'{match.group(1)}.{match.group(2)}'


def supported() -> str:
    """The supported releases, for messages: ``2.7, 2.9, 2.10, 2.11 and 2.13``."""
    releases = list(SPAN)
    return ', '.join(releases[:-1]) + ' and ' + releases[-1]


def requirement_span() -> str:
    """The span as a requirement, releases without a tch release excluded."""
    def key(r: str) -> tuple[int, int]:
        major, minor = r.split('.')
        return int(major), int(minor)

    low, high = key(OLDEST), key(NEWEST)
    gaps = [f'!={low[0]}.{m}.*' for m in range(low[1], high[1] + 1) if f'{low[0]}.{m}' not in SPAN]
    return ','.join([f'torch>={OLDEST}', f'<{high[0]}.{high[1] + 1}', *gaps])


def pinned_requirement(torch_release: str) -> str:
    major, minor = torch_release.split('.')
    return f'torch>={torch_release},<{major}.{int(minor) + 1}'


def pair_for(torch_version: str) -> Pair:
    torch_release = release(torch_version)
    forced = os.environ.get('PROXYLESS_RS_TCH')
    if forced:
        # An experiment outside the span (e.g. torch 2.14 with tch 0.26): unsupported, untested.
        if not any(pair.tch == forced for pair in SPAN.values()):
            raise BuildError(f'PROXYLESS_RS_TCH={forced}: not one of {sorted({p.tch for p in SPAN.values()})}')
        return next(pair for pair in SPAN.values() if pair.tch == forced)
    if torch_release not in SPAN:
        raise BuildError(
            f'proxyless-rs builds against torch {supported()}, not torch {torch_version}: tch, which binds '
            f"libtorch's C++ API, has no release for torch {torch_release}. Install a supported torch into this "
            f'environment first (e.g. `pip install "torch=={NEWEST}.*"`), or build in isolation (`pip install .`, '
            f'which builds against torch {NEWEST} and then needs that torch at run time).'
        )
    return SPAN[torch_release]


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


# --- Cargo.lock and pyproject.toml -----------------------------------------------------------


def pin_lock(lock: str, pair: Pair) -> str:
    """``lock`` (Cargo.lock's text) with tch, torch-sys and pyo3-tch at ``pair.tch``."""
    out = lock
    for crate in CRATES:
        block = re.compile(
            r'(\[\[package\]\]\nname = "' + re.escape(crate) + r'"\nversion = ")([^"]+)("\n'
            r'source = "registry\+[^"]+"\nchecksum = ")([0-9a-f]+)(")'
        )
        checksum = CHECKSUMS[(crate, pair.tch)]
        out, n = block.subn(lambda m, c=checksum: m.group(1) + pair.tch + m.group(3) + c + m.group(5), out)
        if n != 1:
            raise BuildError(f'proxyless-rs: Cargo.lock has {n} entries for {crate}, expected 1')
        # A dependency list names a version only when several versions are locked; keep it in step.
        out = re.sub(r'"' + re.escape(crate) + r' \d+\.\d+\.\d+', f'"{crate} {pair.tch}', out)
    return out


def locked_tch(lock: str) -> str | None:
    match = re.search(r'\[\[package\]\]\nname = "tch"\nversion = "([^"]+)"', lock)
    return match.group(1) if match else None


def pin_pyproject(text: str, torch_release: str) -> str:
    """The stage's pyproject.toml: depends on the torch release built against; local version
    ``+torch<release>``, so that the wheel's file name and ``pip list`` say which."""
    out, n = re.subn(r'"torch[^"]*"', f'"{pinned_requirement(torch_release)}"', text, count=1)
    if n != 1:
        raise BuildError('proxyless-rs: pyproject.toml names no torch dependency')
    local = 'torch' + torch_release
    out, n = re.subn(r'(?m)^(version = ")([^"+]+)"', lambda m: f'{m.group(1)}{m.group(2)}+{local}"', out, count=1)
    if n != 1:
        raise BuildError('proxyless-rs: pyproject.toml has no static version')
    return out


# --- the stage --------------------------------------------------------------------------------


def _sync(src: Path, dest: Path) -> None:
    """Makes ``dest`` a copy of ``src``, rewriting only files whose bytes differ (cargo decides
    what to rebuild by modification times)."""
    if src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        wanted = {p.name for p in src.iterdir() if not SKIPPED.search(p.name)}
        for name in wanted:
            _sync(src / name, dest / name)
        for extra in dest.iterdir():
            if extra.name not in wanted:
                shutil.rmtree(extra) if extra.is_dir() and not extra.is_symlink() else extra.unlink()
    else:
        _write_if_changed(dest, src.read_bytes())


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    if not path.exists() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def stage(source: Path, dest: Path, torch_release: str, pair: Pair) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in STAGED:
        if (source / name).exists():
            _sync(source / name, dest / name)
    _write_if_changed(dest / 'Cargo.lock', pin_lock((source / 'Cargo.lock').read_text(), pair).encode())
    pyproject = pin_pyproject((source / 'pyproject.toml').read_text(), torch_release)
    _write_if_changed(dest / 'pyproject.toml', pyproject.encode())


def target_dir(source: Path, torch_release: str) -> Path:
    """Where cargo builds: CARGO_TARGET_DIR if set, else one folder per torch release under
    target/ (a build for another torch does not undo this one's)."""
    if os.environ.get('CARGO_TARGET_DIR'):
        return Path(os.environ['CARGO_TARGET_DIR']).resolve()
    return source / 'target' / 'pep517' / f'torch-{torch_release}'


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
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


@contextlib.contextmanager
def _build_environment(torch: tuple[str, Path], pair: Pair, target: Path) -> Iterator[None]:
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
        if version.split('+')[0] != pair.torch:
            # torch-sys insists on its exact release (2.7.0); the C++ API is the same across a
            # release's patch versions (2.7.1).
            os.environ['LIBTORCH_BYPASS_VERSION_CHECK'] = '1'
        os.environ['CARGO_TARGET_DIR'] = str(target)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(wrappers, ignore_errors=True)


def _maturin():
    global _MATURIN
    if _MATURIN is None:
        import maturin

        _MATURIN = maturin
    return _MATURIN


def _maturin_args(config_settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """config_settings for maturin: release build, the tag left to ``_retag``."""
    settings = dict(config_settings or {})
    args = _maturin().get_maturin_pep517_args(config_settings)
    if '--compatibility' not in args and '--manylinux' not in args:
        args += ['--compatibility', 'linux']
    if not any(a.startswith('--auditwheel') for a in args):
        args += ['--auditwheel', 'skip']
    settings['maturin.build-args'] = args
    return settings


def _torch_or_fail() -> tuple[str, Path]:
    torch = installed_torch()
    if torch is None:
        raise BuildError(
            'proxyless-rs builds against the torch installed in the build environment, and there is none. '
            f'Install torch ({supported()}) first, or build in isolation (`pip install .` without '
            '--no-build-isolation, which installs a torch for the build).'
        )
    pair_for(torch[0])  # refuses an unsupported torch before anything is built
    return torch


@contextlib.contextmanager
def _in_stage(config_settings: Mapping[str, Any] | None) -> Iterator[tuple[Path, tuple[str, Path]]]:
    source = Path.cwd()
    torch = _torch_or_fail()
    torch_release, pair = release(torch[0]), pair_for(torch[0])
    target = target_dir(source, torch_release)
    stage_dir = target / 'proxyless-rs-stage'
    with _locked(target / 'proxyless-rs-stage.lock'):
        stage(source, stage_dir, torch_release, pair)
        print(
            f'proxyless-rs: building against torch {torch[0]} ({torch[1]}) with tch {pair.tch}, in {stage_dir}',
            flush=True,
        )
        with _build_environment(torch, pair, target):
            os.chdir(stage_dir)
            try:
                yield stage_dir, torch
            finally:
                os.chdir(source)


# --- the wheel's tag --------------------------------------------------------------------------


def _retag(wheel_directory: str, filename: str) -> str:
    """The manylinux tag the wheel's symbol versions allow, the torch libraries excluded (they
    come from the torch package at run time), when auditwheel is installed; else as built."""
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


# --- PEP 517 hooks ----------------------------------------------------------------------------


def get_requires_for_build_wheel(config_settings: Mapping[str, Any] | None = None) -> list[str]:
    requires = list(_maturin().get_requires_for_build_wheel(config_settings))
    if installed_torch() is None:
        # An isolated build: build against the torch of the environment being installed into
        # when pip's isolation lets us see it and it is supported (so that installing keeps it),
        # else against the newest supported release.
        theirs = target_environment_torch()
        if theirs is not None and release(theirs) in SPAN:
            requires.append(f'torch=={theirs.split("+")[0]}')
        else:
            requires.append(pinned_requirement(NEWEST))
    return requires


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Mapping[str, Any] | None = None) -> str:
    metadata_directory = os.path.abspath(metadata_directory)
    with _in_stage(config_settings):
        return _maturin().prepare_metadata_for_build_wheel(metadata_directory, _maturin_args(config_settings))


def build_wheel(
    wheel_directory: str, config_settings: Mapping[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    wheel_directory = os.path.abspath(wheel_directory)
    metadata_directory = os.path.abspath(metadata_directory) if metadata_directory else None
    with _in_stage(config_settings):
        filename = _maturin().build_wheel(wheel_directory, _maturin_args(config_settings), metadata_directory)
        return _retag(wheel_directory, filename)


def get_requires_for_build_sdist(config_settings: Mapping[str, Any] | None = None) -> list[str]:
    return list(_maturin().get_requires_for_build_sdist(config_settings))


def build_sdist(sdist_directory: str, config_settings: Mapping[str, Any] | None = None) -> str:
    # The sdist keeps the span (pyproject.toml as it is) and this backend; a wheel built from it
    # goes through build_wheel above.
    return _maturin().build_sdist(sdist_directory, config_settings)


# Editable installs build in place (maturin puts the compiled core into python/proxyless_rs/):
# the checkout's Cargo.lock is pinned for this torch and left so, for later cargo commands.
get_requires_for_build_editable = get_requires_for_build_wheel


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: Mapping[str, Any] | None = None
) -> str:
    torch = _torch_or_fail()
    _pin_checkout(Path.cwd(), pair_for(torch[0]))
    return _maturin().prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(
    wheel_directory: str, config_settings: Mapping[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    source = Path.cwd()
    torch = _torch_or_fail()
    pair = pair_for(torch[0])
    _pin_checkout(source, pair)
    target = Path(os.environ.get('CARGO_TARGET_DIR') or source / 'target')
    with _build_environment(torch, pair, target):
        return _maturin().build_editable(wheel_directory, config_settings, metadata_directory)


def _pin_checkout(source: Path, pair: Pair) -> bool:
    lock = source / 'Cargo.lock'
    text = lock.read_text()
    pinned = pin_lock(text, pair)
    if pinned != text:
        lock.write_text(pinned)
        print(f'proxyless-rs: Cargo.lock pinned to tch {pair.tch} (torch {pair.torch})', flush=True)
        return True
    return False


def main(argv: list[str]) -> int:
    if argv[:1] == ['--pin-lock']:
        torch_release = argv[1] if len(argv) > 1 else release(_torch_or_fail()[0])
        if torch_release not in SPAN:
            raise SystemExit(f'no tch release for torch {torch_release}; supported: {supported()}')
        source = Path(__file__).resolve().parent.parent
        if not _pin_checkout(source, SPAN[torch_release]):
            print(f'Cargo.lock already holds tch {SPAN[torch_release].tch} (torch {torch_release})')
        return 0
    if argv:
        raise SystemExit(__doc__)
    print('torch  tch / pyo3-tch / torch-sys')
    for torch_release, pair in SPAN.items():
        print(f'{torch_release:<6} {pair.tch}')
    print(f'dependency: {requirement_span()}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
