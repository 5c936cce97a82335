"""The span of torch releases: the build backend's table against Cargo.toml, Cargo.lock,
pyproject.toml, the README and the compiled core's own record.

Pure file checks, no build: the builds themselves are checked by `make test-regression` for each
release (README, "Supported torch versions").
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'build_backend'))
import proxyless_build as backend  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # maturin depends on tomli below 3.11
    import tomli as tomllib

LOCK = (ROOT / 'Cargo.lock').read_text()
PYPROJECT = (ROOT / 'pyproject.toml').read_text()


def locked_versions(lock: str) -> dict[str, tuple[str, str]]:
    packages = tomllib.loads(lock)['package']
    return {p['name']: (p['version'], p.get('checksum', '')) for p in packages if p['name'] in backend.CRATES}


def test_committed_lock_holds_the_newest_release():
    assert locked_versions(LOCK) == {
        crate: (backend.SPAN[backend.NEWEST].tch, backend.CHECKSUMS[(crate, backend.SPAN[backend.NEWEST].tch)])
        for crate in backend.CRATES
    }


@pytest.mark.parametrize('torch_release', list(backend.SPAN))
def test_pin_lock_changes_only_the_three_crates(torch_release):
    pair = backend.SPAN[torch_release]
    pinned = backend.pin_lock(LOCK, pair)
    expected = {crate: (pair.tch, backend.CHECKSUMS[(crate, pair.tch)]) for crate in backend.CRATES}
    assert locked_versions(pinned) == expected
    others = lambda lock: [p for p in tomllib.loads(lock)['package'] if p['name'] not in backend.CRATES]  # noqa: E731
    assert others(pinned) == others(LOCK)
    assert backend.pin_lock(pinned, pair) == pinned
    assert backend.pin_lock(pinned, backend.SPAN[backend.NEWEST]) == LOCK
    assert backend.locked_tch(pinned) == pair.tch


def test_cargo_toml_accepts_every_pair():
    deps = tomllib.loads((ROOT / 'Cargo.toml').read_text())['dependencies']
    for crate in backend.CRATES:
        requirement = deps[crate] if isinstance(deps[crate], str) else deps[crate]['version']
        low, high = re.fullmatch(r'>=(\d+\.\d+), <(\d+\.\d+)', requirement).groups()
        bounds = [tuple(int(x) for x in bound.split('.')) for bound in (low, high)]
        for pair in backend.SPAN.values():
            minor = tuple(int(x) for x in pair.tch.split('.')[:2])
            assert bounds[0] <= minor < bounds[1], (crate, pair)


def test_pyproject_depends_on_the_span():
    dependencies = tomllib.loads(PYPROJECT)['project']['dependencies']
    assert [d for d in dependencies if d.startswith('torch')] == [backend.requirement_span()]
    assert backend.requirement_span() == 'torch>=2.7,<2.14,!=2.8.*,!=2.12.*'


def test_nni_pins_are_extras_only():
    project = tomllib.loads(PYPROJECT)['project']
    assert not [d for d in project['dependencies'] if d.startswith(('nni', 'pytorch-lightning'))]
    assert 'nni==2.10.1' in project['optional-dependencies']['nni2']
    assert 'nni==3.0' in project['optional-dependencies']['nni3']


def test_pin_pyproject_records_the_release():
    pinned = tomllib.loads(backend.pin_pyproject(PYPROJECT, '2.10'))['project']
    assert pinned['version'] == tomllib.loads(PYPROJECT)['project']['version'] + '+torch2.10'
    assert [d for d in pinned['dependencies'] if d.startswith('torch')] == ['torch>=2.10,<2.11']
    assert pinned['optional-dependencies'] == tomllib.loads(PYPROJECT)['project']['optional-dependencies']


@pytest.mark.parametrize(
    'version, expected',
    [('2.7.1', '2.7'), ('2.7.1+cu126', '2.7'), ('2.13.0', '2.13'), ('2.10.0a0+git123', '2.10'), ('2.15.0', '2.15')],
)
def test_release(version, expected):
    assert backend.release(version) == expected


def test_unsupported_torch_is_refused_with_the_span():
    for version in ('2.8.0', '2.12.1', '2.14.0', '2.15.0', '2.6.0'):
        with pytest.raises(backend.BuildError, match=r'torch 2\.7, 2\.9, 2\.10, 2\.11 and 2\.13'):
            backend.pair_for(version)
    assert backend.pair_for('2.7.1+cu126') == backend.SPAN['2.7']


def test_readme_table_lists_the_span():
    readme = (ROOT / 'README.md').read_text()
    table = readme[readme.index('## Supported torch versions') :]
    for torch_release, pair in backend.SPAN.items():
        assert re.search(rf'^\| {re.escape(torch_release)} \| {re.escape(pair.tch)} \|', table, re.M), torch_release


def test_core_names_the_span_in_its_message():
    source = (ROOT / 'src' / 'torch_version.rs').read_text()
    assert f'pub const SUPPORTED: &str = "{backend.supported()}";' in source
    from proxyless_rs import _torch_check

    assert _torch_check._SUPPORTED == backend.supported()


def test_core_was_built_against_the_running_torch():
    from proxyless_rs import _core, _torch_check

    built = _torch_check.built_against(Path(_core.__file__).parent)
    assert built is not None and backend.release(built) == backend.release(torch.__version__)
