"""`make span` and `make wheels`: every torch release of torch-span.toml, built and tested.

For each release, in a venv of its own (removed afterwards: a torch is 4-5 GB installed):

1. ``torch==<tested>`` and the NNI 2.10 stack (requirements-nni2.txt);
2. ``pip install --no-build-isolation .`` against that torch (timed), then scripts/check_install.py:
   torch is still that release, and the install records it;
3. the NNI 2.10 regression tests against that install;
4. the wheel of that build (``pip wheel --no-build-isolation``, into dist/wheels/), and
   scripts/wheel_check.sh in the same venv: the wheel installed with no Rust or C++ compiler on
   PATH, the regression tests again against it.

Results go to docs/torch-span.json as each release ends (one entry per release, from the last run of each), and
docs/torch-span.md's table is rendered from it and torch-span.toml (``span.py table``).

    python scripts/span.py run                  # all releases (make span)
    python scripts/span.py run 2.0 2.15         # some
    python scripts/span.py run --jobs 2         # two releases at a time
    python scripts/span.py wheels               # steps 1, 2 and the wheel only (make wheels)
    python scripts/span.py table                # re-render the table
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'build_backend'))
from proxyless_build.span import (  # noqa: E402
    SPAN,
    Release,
    key,
    release as release_of,  # noqa: E402
)

RESULTS = ROOT / 'docs' / 'torch-span.json'
TABLE_DOC = ROOT / 'docs' / 'torch-span.md'
WHEELS = ROOT / 'dist' / 'wheels'
# The regression tests: the test modules marked `regression` (registered in pyproject.toml), the
# same selection as the Makefile's test-regression.
REGRESSION_TESTS = ['-m', 'regression']
BEGIN, END = '<!-- span table: begin (scripts/span.py table) -->', '<!-- span table: end -->'
HEARTBEAT_S = 30
_print_lock = threading.Lock()


def say(release: str, text: str) -> None:
    with _print_lock:
        print(f'[torch {release}] {text}', flush=True)


def run(release: str, what: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[int, float]:
    """Runs ``cmd`` with its output in ``log``; says every HEARTBEAT_S that it still runs, so that
    no stretch (torch-sys's C++ takes minutes) stays silent."""
    start = time.monotonic()
    say(release, f'{what} ...')
    with open(log, 'a') as out:
        out.write(f'\n$ {" ".join(cmd)}\n')
        out.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        while True:
            try:
                proc.wait(timeout=HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                say(release, f'{what}: still running ({time.monotonic() - start:.0f} s)')
    took = time.monotonic() - start
    outcome = 'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode}, {log})'
    say(release, f'{what}: {outcome} in {took:.0f} s')
    return proc.returncode, took


def pytest_summaries(text: str) -> list[str]:
    """pytest's closing lines in ``text``, in order (``-q`` prints them without the ``=`` rule)."""
    return re.findall(r'^=*\s*(\d+ (?:passed|failed|error).*?) in [\d.]+s', text, re.M)


def pytest_summary(log: Path) -> str:
    lines = pytest_summaries(log.read_text())
    return lines[-1] if lines else 'no pytest summary'


def one_release(entry: Release, target_root: Path, python: str, tests: bool) -> dict:
    release = entry.torch
    venv = ROOT / f'.venv-span-{release}'
    logs = target_root / 'span-logs'
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f'torch-{release}.log'
    log.write_text('')
    shutil.rmtree(venv, ignore_errors=True)
    result: dict = {'torch': release, 'tested': entry.tested, 'tch': entry.tch, 'patch': entry.patch,
                    'bypass': entry.tested != entry.generated, 'python': platform.python_version(), **provenance()}
    pip = [str(venv / 'bin' / 'python'), '-m', 'pip', '--disable-pip-version-check']
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_root / 'pep517' / f'torch-{release}'), PIP_NO_CACHE_DIR='1')
    env.pop('VIRTUAL_ENV', None)
    try:
        steps = [
            ('venv', [python, '-m', 'venv', str(venv)]),
            (f'torch=={entry.tested} and the NNI 2.10 stack',
             [*pip, 'install', f'torch=={entry.tested}', '-r', 'requirements-nni2.txt']),
            ('pip install --no-build-isolation .', [*pip, 'install', '--no-build-isolation', '-v', '.']),
            ('torch kept, release recorded', [str(venv / 'bin' / 'python'), 'scripts/check_install.py', entry.tested]),
        ]
        if tests:
            steps.append(('NNI 2.10 regression tests', [str(venv / 'bin' / 'python'), '-m', 'pytest', '-q',
                                                        '-p', 'no:cacheprovider', *REGRESSION_TESTS]))
        steps.append(('the wheel', [*pip, 'wheel', '--no-build-isolation', '--no-deps', '-w', str(WHEELS), '.']))
        for what, cmd in steps:
            rc, took = run(release, what, cmd, log, env)
            result.setdefault('seconds', {})[what] = round(took)
            if rc != 0:
                result['failed'] = what
                return result
            if what.startswith('NNI 2.10 regression'):
                result['tests'] = pytest_summary(log)
        wheels = sorted(WHEELS.glob(f'proxyless_rs-*+torch{release}-*.whl'), key=lambda p: p.stat().st_mtime)
        result['wheel'] = wheels[-1].name
        result['wheel_kib'] = wheels[-1].stat().st_size // 1024
        if tests:
            check = ['bash', 'scripts/wheel_check.sh', str(wheels[-1])]
            env = dict(env, WHEEL_CHECK_VENV=str(venv))
            rc, took = run(release, 'the wheel without a compiler on PATH', check, log, env)
            result['seconds']['wheel check'] = round(took)
            if rc != 0:
                result['failed'] = 'wheel check'
                return result
            result['wheel_tests'] = pytest_summary(log)
        return result
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def provenance() -> dict[str, str]:
    git = lambda *a: subprocess.run(['git', *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    # The results files are written by the run itself (after each release): not a change to the code.
    dirty = git('status', '--porcelain', '--untracked-files=no', '--', '.', ':!docs/torch-span.json',
                ':!docs/torch-span.md')
    commit = git('rev-parse', '--short', 'HEAD') + ('+changes' if dirty else '')
    return {'date': datetime.date.today().isoformat(), 'commit': commit,
            'host': f'{os.cpu_count()} cores, {platform.machine()}'}


def build_seconds(result: dict) -> int | None:
    return result.get('seconds', {}).get('pip install --no-build-isolation .')


def render_table(results: dict[str, dict]) -> str:
    rows = ['| torch | tch | how | built in | regression tests | its wheel, no compiler |', '|---|---|---|---|---|---|']
    for release, entry in SPAN.items():
        if entry.patch:
            how = f'tch of {entry.generated}, torch-sys patched (`{entry.patch}`)'
        elif release_of(entry.generated) != release:
            how = f'tch of {entry.generated} (none for {release})'
        else:
            how = 'its own tch'
        r = results.get(release)
        if r is None:
            rows.append(f'| {entry.tested} | {entry.tch} | {how} | not run | not run | not run |')
            continue
        built = f'{build_seconds(r) // 60} min {build_seconds(r) % 60} s' if build_seconds(r) is not None else '-'
        tests = r.get('tests', f"FAILED at {r['failed']}" if 'failed' in r else '-')
        wheel = r.get('wheel_tests', f"FAILED at {r['failed']}" if r.get('failed') == 'wheel check' else '-')
        rows.append(f"| {r['tested']} | {r['tch']} | {how} | {built} | {tests} | {wheel} |")
    return '\n'.join(rows)


def record(result: dict) -> None:
    """``result`` into docs/torch-span.json (replacing that release's last one) and the table."""
    previous = json.loads(RESULTS.read_text())['releases'] if RESULTS.exists() else {}
    previous[result['torch']] = result
    ordered = {r: previous[r] for r in sorted(previous, key=key)}
    RESULTS.write_text(json.dumps({'releases': ordered}, indent=1) + '\n')
    write_table()


def write_table() -> None:
    results = json.loads(RESULTS.read_text())['releases'] if RESULTS.exists() else {}
    runs = sorted({(r['date'], r['commit'], r['python'], r['host'], r.get('jobs', 1)) for r in results.values()})
    text = TABLE_DOC.read_text()
    before, rest = text.split(BEGIN)
    _, after = rest.split(END)
    said = '; '.join(f'{d}, commit {c}, Python {p}, {h}, {j} release(s) at a time' for d, c, p, h, j in runs)
    note = (f'\nFrom `make span` ({said or "not run yet"}). A build time includes torch-sys\'s C++ wrapper, from an '
            'empty cargo target folder.\n\n')
    TABLE_DOC.write_text(before + BEGIN + note + render_table(results) + '\n' + END + after)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('command', choices=['run', 'wheels', 'table'])
    parser.add_argument('releases', nargs='*', help='torch minors (default: all of torch-span.toml)')
    parser.add_argument('--jobs', type=int, default=1)
    parser.add_argument('--target-root', default=os.environ.get('TARGET_ROOT', str(ROOT / 'target')))
    parser.add_argument('--python', default=os.environ.get('PYTHON', sys.executable))
    parser.add_argument('--keep-target', action='store_true', help='keep the cargo target folders (else each '
                        'build starts from an empty one, so that the times are those of a first build)')
    args = parser.parse_args(argv)
    if args.command == 'table':
        write_table()
        return 0
    releases = args.releases or list(SPAN)
    unknown = [r for r in releases if r not in SPAN]
    if unknown:
        parser.error(f'not in torch-span.toml: {unknown}')
    target_root = Path(args.target_root).resolve()
    if not args.keep_target:
        for release in releases:
            shutil.rmtree(target_root / 'pep517' / f'torch-{release}', ignore_errors=True)
    WHEELS.mkdir(parents=True, exist_ok=True)
    tests = args.command == 'run'
    start = time.monotonic()

    def run_one(release: str) -> dict:
        result = dict(one_release(SPAN[release], target_root, args.python, tests), jobs=args.jobs)
        if tests:  # recorded as each release ends, so that a span stopped half-way keeps what it ran
            with _print_lock:
                record(result)
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(run_one, releases))
    failed = [r['torch'] for r in done if 'failed' in r]
    for r in done:
        failure = f"; FAILED at {r['failed']}" if 'failed' in r else ''
        print(f"torch {r['tested']} (tch {r['tch']}): build {build_seconds(r)} s; tests {r.get('tests', '-')}; "
              f"wheel {r.get('wheel', '-')}: {r.get('wheel_tests', '-')}{failure}")
    print(f'span: {len(done) - len(failed)} of {len(done)} releases passed in {(time.monotonic() - start) / 60:.0f} min'
          + (f'; failed: {failed}' if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
