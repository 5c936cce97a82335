#!/usr/bin/env bash
# The wheel on a machine without a Rust toolchain or a C/C++ compiler: a fresh venv whose PATH
# holds nothing but its own bin/ and a folder with the few system tools pip and the tests use,
# the wheel with its nni2 and test extras (torch from PyPI, or pip's cache), then the NNI 2.10
# regression tests against that install.
#
#   bash scripts/wheel_check.sh dist/proxyless_rs-*.whl     (make wheel-check)
#
# WHEEL_CHECK_VENV=path uses that venv (which holds torch; its proxyless-rs is uninstalled first)
# instead of a fresh one (make span: the venv the release was built in).
#
# Then a second venv holding a fake torch outside the span (1.13.1, metadata and a module only):
# the wheel installs there without touching that torch (it requires none), and importing it says
# which torch it needs.
#
# Prints the wheel's size, its tag, the RUNPATH and libraries of the compiled core, and what pip
# installed; exits non-zero if a compiler is reachable, the install or a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL=$(realpath "$1")
PYTHON=${PYTHON:-python3}
BASE_PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')
WORK=$(mktemp -d /tmp/proxyless-wheel-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

echo "wheel: $(basename "$WHEEL"), $(du -k "$WHEEL" | cut -f1) KiB"
mkdir -p "$WORK/unpacked"
"$BASE_PYTHON" -m zipfile -e "$WHEEL" "$WORK/unpacked"
core=$(ls "$WORK"/unpacked/proxyless_rs/_core*.so)
if command -v readelf >/dev/null; then
    readelf -d "$core" | grep -E 'NEEDED|RUNPATH|RPATH' | sed 's/^ */    /'
fi
if ls "$WORK"/unpacked/*.libs >/dev/null 2>&1; then
    echo "wheel_check: the wheel bundles libraries: $(ls "$WORK"/unpacked/*.libs)" >&2
    exit 1
fi

# PATH: a folder with links to the system tools needed here (no cc, c++, gcc, g++, clang, ld,
# cargo, rustc), then the venv's bin/.
mkdir -p "$WORK/tools"
for tool in sh bash env uname ls cat cp rm mkdir readlink dirname basename grep sed tr cut paste head tail; do
    if path=$(command -v "$tool"); then ln -s "$path" "$WORK/tools/$tool"; fi
done
VENV=${WHEEL_CHECK_VENV:-$WORK/venv}
if [ -z "${WHEEL_CHECK_VENV:-}" ]; then
    "$BASE_PYTHON" -m venv "$VENV"
else
    "$VENV/bin/python" -m pip uninstall --disable-pip-version-check --yes --quiet proxyless-rs
fi
"$BASE_PYTHON" -m venv "$WORK/fake-torch"
export PATH="$VENV/bin:$WORK/tools"
unset CARGO_HOME RUSTUP_HOME CC CXX
for tool in cargo rustc rustup cc c++ gcc g++ clang clang++ ld; do
    if command -v "$tool" >/dev/null 2>&1; then
        echo "wheel_check: $tool is on PATH ($(command -v "$tool"))" >&2
        exit 1
    fi
done
echo "PATH=$PATH: no cargo, rustc, cc, c++, gcc, g++, clang or ld"

SECONDS=0
python -m pip install --disable-pip-version-check --quiet "$WHEEL[nni2,test,torch]"
echo "installed in $SECONDS s: $(python -m pip list 2>/dev/null | grep -iE '^(torch|nni|proxyless-rs) ' | tr -s ' ' | paste -sd ';')"

# The regression tests from this checkout against the installed package (not python/ of the
# checkout): the files they read beside them.
cp -r tests benchmarks build_backend scripts docs "$WORK/"
cp pyproject.toml Cargo.toml Cargo.lock torch-span.toml requirements-*.txt "$WORK/"
cd "$WORK"
python -c 'import proxyless_rs, sys; assert proxyless_rs.__file__.startswith(sys.prefix), proxyless_rs.__file__; print("proxyless_rs from", proxyless_rs.__file__)'
python -m pytest -q -p no:cacheprovider -m regression

# The wheel into an environment whose torch is outside the span: torch stays, import explains.
FAKE="$WORK/fake-torch"
site=$("$FAKE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$site/torch" "$site/torch-1.13.1.dist-info"
echo "__version__ = '1.13.1'" > "$site/torch/__init__.py"
printf 'Metadata-Version: 2.1\nName: torch\nVersion: 1.13.1\n' > "$site/torch-1.13.1.dist-info/METADATA"
printf 'torch/__init__.py,,\n' > "$site/torch-1.13.1.dist-info/RECORD"
"$FAKE/bin/python" -m pip install --disable-pip-version-check --quiet --no-index "$WHEEL"
kept=$("$FAKE/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')
[ "$kept" = 1.13.1 ] || { echo "wheel_check: installing the wheel changed torch 1.13.1 to $kept" >&2; exit 1; }
message=$("$FAKE/bin/python" -c 'import proxyless_rs' 2>&1 | tail -1 || true)
echo "fake torch 1.13.1: kept; import says: $message"
case "$message" in
    *"built against torch"*"torch 1.13.1 is installed"*"+torch"*) ;;
    *) echo "wheel_check: importing under torch 1.13.1 does not say which torch the wheel needs" >&2; exit 1 ;;
esac
