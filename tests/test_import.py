"""``import proxyless_rs`` is lean: torch and the compiled core; the rest loads on first use."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import proxyless_rs

STRATEGIES = ('nni.nas.oneshot.pytorch.strategy', 'nni.nas.strategy', 'nni.retiarii.strategy')
LIGHTNING = ('pytorch_lightning', 'lightning', 'lightning_fabric')


def modules_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter after running ``code``."""
    script = f'{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))'
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def within(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + '.') for p in packages))


def test_import_loads_neither_lightning_nor_nni():
    modules = modules_after('import proxyless_rs')
    assert {'torch', 'proxyless_rs', 'proxyless_rs._core'} <= modules
    assert within(modules, LIGHTNING) == []
    assert within(modules, STRATEGIES) == []
    assert within(modules, ('nni',)) == []
    assert within(modules, ('proxyless_rs',)) == ['proxyless_rs', 'proxyless_rs._core']


def test_the_layers_load_no_strategy():
    # NNI's supermodule package imports Lightning itself (nni.nas.oneshot.pytorch's __init__), so
    # the layers cost what importing NNI's own layers costs; its strategies stay unloaded.
    modules = modules_after('from proxyless_rs import ProxylessMixedInput, ProxylessMixedLayer, no_arch_grad')
    assert 'proxyless_rs.supermodule' in modules
    assert within(modules, STRATEGIES) == []
    assert 'proxyless_rs.strategy' not in modules and 'proxyless_rs.lightning' not in modules


def test_strategy_lightning_and_distributed_load_on_first_use():
    code = '\n'.join([
        'import sys, proxyless_rs',
        "assert 'proxyless_rs.strategy' not in sys.modules",
        'strategy = proxyless_rs.strategy.Proxyless(arc_learning_rate=1e-2)',
        'from nni.nas.oneshot.pytorch.strategy import Proxyless',
        'assert isinstance(strategy, Proxyless), type(strategy).__mro__',
        'assert proxyless_rs.distributed.setup is not None',
        'assert proxyless_rs.ProxylessLightningModule.__module__.startswith("proxyless_rs.nni.v")',
    ])
    modules = modules_after(code)
    assert {'proxyless_rs.strategy', 'proxyless_rs.lightning', 'proxyless_rs.distributed'} <= modules
    assert within(modules, ('nni.nas.oneshot.pytorch.strategy',))


def test_every_public_name_resolves_and_is_listed():
    for name in proxyless_rs.__all__:
        assert getattr(proxyless_rs, name) is not None, name
    assert set(proxyless_rs.__all__) <= set(dir(proxyless_rs))
    from proxyless_rs import ProxylessMixedLayer, patch_nni  # noqa: F401  (the from-import form)

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        proxyless_rs.NoSuchThing  # noqa: B018


def test_what_type_checkers_see_is_the_list_of_lazy_names():
    # The TYPE_CHECKING imports of __init__.py repeat _LAZY_NAMES for tools that cannot follow
    # __getattr__: the same names, each from the module that _LAZY_NAMES says defines it.
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(proxyless_rs))
    block = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, 'id', '') ==
                 'TYPE_CHECKING')
    seen = {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names}
    assert seen == proxyless_rs._LAZY_NAMES


def test_library_code_sets_no_global_warning_filter():
    """Silencing another package's warnings is the application's choice (the examples do it),
    not the library's: a filter outside ``warnings.catch_warnings()`` would apply process-wide."""
    offenders = []
    for path in sorted(Path(proxyless_rs.__file__).parent.glob('*.py')):
        tree = ast.parse(path.read_text())
        scoped = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.With) and any('catch_warnings' in ast.unparse(item.context_expr)
                                                  for item in node.items):
                scoped.update(id(inner) for inner in ast.walk(node))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ('filterwarnings', 'simplefilter') and id(node) not in scoped):
                offenders.append(f'{path.name}:{node.lineno}')
    assert offenders == []


def test_the_subprocess_check_can_fail():
    # The detector itself: importing Lightning shows up.
    assert within(modules_after('import proxyless_rs, pytorch_lightning'), LIGHTNING)


def test_importing_our_strategy_first_leaves_nnis_strategies_whole():
    # NNI's strategy package imports its one-shot strategies lazily through a try/except that binds a
    # failed-import stub: importing them before the package finished initialising left every one of
    # NNI's strategies (DARTS, ENAS, ...) a stub.
    strategies = 'nni.nas.strategy' if proxyless_rs.nni.version.NNI3 else 'nni.retiarii.strategy'
    script = (f'import proxyless_rs.strategy\nimport {strategies} as s\n'
              'print([getattr(cls, "__name__", type(cls).__name__) for cls in (s.DARTS, s.ENAS, s.RandomOneShot)])')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "['DARTS', 'ENAS', 'RandomOneShot']"
