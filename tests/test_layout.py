"""The shape of the code: no module of the Rust core or of the Python package imports one that
imports it back (docs/architecture.md), and lib.rs only registers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [node, dep] if dep in path else [node, dep]
            if dep not in state and (found := visit(dep, path + [node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def rust_imports() -> dict[str, set[str]]:
    """Module (``choice::tap``; a directory's ``mod.rs`` is the directory's module) -> the modules
    its ``crate::`` paths name, each path resolved to the longest module it starts with."""
    src = ROOT / 'src'

    def module(path: Path) -> str:
        parts = path.relative_to(src).with_suffix('').parts
        return '::'.join(parts[:-1] if parts[-1] == 'mod' else parts)

    files = sorted(src.rglob('*.rs'))
    modules = {module(path) for path in files}

    def resolve(dotted: str) -> str:
        parts = dotted.split('::')
        return next('::'.join(parts[:n]) for n in range(len(parts), 0, -1) if '::'.join(parts[:n]) in modules)

    graph = {}
    for path in files:
        text = path.read_text()
        deps: set[str] = set()
        for match in re.finditer(r'crate::((?:\w+::)*)(\{[^}]*\}|\w+)', text):
            prefix, tail = match.group(1), match.group(2)
            for name in tail.strip('{}').split(','):
                if name.strip():
                    deps.add(resolve(prefix + name.strip()))
        graph[module(path)] = deps - {module(path)}
    return graph


def python_imports() -> dict[str, set[str]]:
    """Imports inside the package (dotted names below it, a package by its ``__init__``), module
    level only: an import inside a function is a lazy one, run after both modules have loaded."""
    package = ROOT / 'python' / 'proxyless_rs'

    def dotted(path: Path) -> tuple[str, ...]:
        parts = path.relative_to(package).with_suffix('').parts
        return parts[:-1] if parts[-1] == '__init__' else parts

    files = sorted(package.rglob('*.py'))
    modules = {dotted(path) for path in files}
    graph = {}
    for path in files:
        name = dotted(path)
        here = name if path.name == '__init__.py' else name[:-1]  # the package a relative import starts at
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[:len(here) - (node.level - 1)]
                target = base + tuple(node.module.split('.')) if node.module else base
                for alias in node.names:
                    if target + (alias.name,) in modules:
                        deps.add(target + (alias.name,))
                    elif target in modules:
                        deps.add(target)
        graph['.'.join(name)] = {'.'.join(dep) for dep in deps} - {'.'.join(name)}
    return graph


def test_cycle_finds_a_cycle():
    assert cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) is not None
    assert cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None


def test_no_rust_module_imports_one_that_imports_it_back():
    graph = rust_imports()
    expected = {'choice::context', 'choice::tap', 'choice::gate', 'choice::saved_call', 'choice', 'arch::gradient'}
    assert expected <= set(graph)
    assert 'choice::saved_call' in graph['choice::tap'] and 'arch::gradient' in graph['choice::gate']
    assert cycle(graph) is None, f'import cycle in src/: {" -> ".join(cycle(graph) or [])}'


def test_rust_groups_depend_downwards():
    # choice (forward, saved call, tap, backward) -> arch (parameters, draws, gradient, export)
    # -> interop (torch and CPython) -> errors: what each group's mod.rs says of it.
    # testing (unit tests' shared helpers, compiled in tests only) is below them all.
    below = {
        'choice': {'arch', 'interop', 'errors'}, 'arch': {'interop', 'errors'}, 'interop': {'errors'}, 'errors': set(),
        'constrained': set(),  # the solver: numbers only
    }
    below = {group: deps | {'testing'} for group, deps in below.items()} | {'testing': set()}
    for name, deps in rust_imports().items():
        group = name.split('::')[0]
        if group in below:
            outside = {dep.split('::')[0] for dep in deps} - {group} - below[group]
            assert not outside, f'src/ module {name} reaches up to {sorted(outside)}'


def test_lib_rs_only_registers():
    assert rust_imports()['lib'] == set()
    text = (ROOT / 'src' / 'lib.rs').read_text()
    assert not re.search(r'^\s*(pub )?(fn|struct|enum|impl|trait) ', text.replace('fn _core', ''), re.M)


def test_no_python_module_imports_one_that_imports_it_back():
    graph = python_imports()
    assert {'nni.v2.layers', 'nni.v3.strategy', 'hardware.export', '_layer'} <= set(graph)
    assert 'hardware.tables' in graph['hardware.export'] and '_layer' in graph['nni.v2.layers']
    assert cycle(graph) is None, f'import cycle in python/proxyless_rs/: {" -> ".join(cycle(graph) or [])}'


def test_the_version_is_written_once():
    # pyproject.toml's; the crate has none of its own (Cargo's default, 0.0.0, is never shown), and
    # __version__ is the installed distribution's (with a wheel's +torchX.Y).
    import tomllib

    assert 'version' not in tomllib.loads((ROOT / 'Cargo.toml').read_text())['package']
    assert tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['version']


def test_the_core_names_no_nni_attribute():
    # The core knows choices, not NNI: the Python side hands it each choice's alternatives and alpha
    # (a layer's candidates, a mixed operation's values). No attribute of NNI's classes is read in
    # src/ (its comments may say what NNI does).
    nni_attributes = ['_arch_alpha', 'op_names', 'names', 'forward_path', '_plain_forward_path', '_sample_idx',
                      '_sampled', '_softmax', '_binary_gates', 'sampling_policy', 'mutable_arguments', 'n_candidates',
                      'n_chosen', '_modules']
    for path in sorted((ROOT / 'src').rglob('*.rs')):
        code = '\n'.join(line.split('//')[0] for line in path.read_text().splitlines())
        for name in nni_attributes:
            assert f'"{name}"' not in code, f'{path.relative_to(ROOT)} reads {name!r}'


def test_the_architecture_pages_layout_names_every_source_file():
    # docs/architecture.md's layout section, kept true to the tree: every source file is named there
    # (by its file name, or its module name).
    text = (ROOT / 'docs' / 'architecture.md').read_text()
    layout = text[text.index('## Layout'):]
    patterns = ['python/proxyless_rs/**/*.py', 'python/proxyless_rs/*.pyi', 'benchmarks/*.py', 'examples/*.py',
                'scripts/*', 'build_backend/proxyless_build/*.py', 'src/**/*.rs', 'tests/*.py']
    files = [path for pattern in patterns for path in ROOT.glob(pattern)
             if path.is_file() and path.name != '__init__.py' and '__pycache__' not in path.parts]
    assert len(files) > 60
    missing = sorted(str(path.relative_to(ROOT)) for path in files if path.name not in layout
                     and (path.suffix not in ('.py', '.rs', '.pyi') or path.stem not in layout))
    assert not missing, f'docs/architecture.md does not name {missing}'


def test_the_license_the_manifests_name_is_there():
    import tomllib

    assert tomllib.loads((ROOT / 'Cargo.toml').read_text())['package']['license'] == 'MIT'
    assert tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['license'] == {'file': 'LICENSE'}
    assert (ROOT / 'LICENSE').read_text().startswith('MIT License')
