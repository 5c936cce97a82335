# One entry point for people and CI. Every target creates the virtual environment it needs, and
# a target whose inputs did not change since its last run does not redo its work.
#   make demo     set up, build, run the digits search (NNI's layers and ours, side by side), from a
#                 plain PyTorch script and through NNI's RetiariiExperiment
#   make test     set up, build, run the pytest suite and the Rust unit tests
#   make lint     set up, build, run the gates: cargo fmt --check, cargo clippy -D warnings, ruff, stubtest
#   make bench    set up, build, run the benchmark harness
#   make gpu      set up, build, run everything that needs a GPU (scripts/gpu_check.sh)
#   make wheel    build a wheel into dist/ the way `pip install .` does
#
# Set-up is two stamped phases, each printing what it does and how long it took:
#   .venv/.deps     the Python packages of requirements-dev.txt (redone when that file changes)
#   .venv/.develop  the extension, built by maturin into the venv (redone when the Rust sources,
#                   Cargo.toml, Cargo.lock, pyproject.toml or .cargo/config.toml change).
# Python changes under python/ need no rebuild: the package is installed as a link to python/.

PYTHON ?= python3
VENV ?= .venv
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
# Each recipe runs in one shell (a phase's timer spans its lines; `-e` stops at the first failure).
.ONESHELL:
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)
export PYTHONUNBUFFERED := 1
PY := $(VIRTUAL_ENV)/bin/python
# torch-sys's build script finds libtorch through this interpreter (LIBTORCH_USE_PYTORCH=1 is
# set in .cargo/config.toml); the Rust test binary loads libtorch from the same place.
TORCH_LIB = $(shell $(PY) -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")

DEPS := $(VENV)/.deps
DEVELOP := $(VENV)/.develop
RUST_INPUTS := $(wildcard src/*.rs) Cargo.toml Cargo.lock pyproject.toml .cargo/config.toml
LINT_PATHS := python tests benchmarks examples

# $(call start,WHAT) / $(call done,WHAT): a phase's first and last lines, the last with its duration.
start = echo "==> $(1)"; SECONDS=0
done = echo "    $(1): done in $$((SECONDS / 60)) min $$((SECONDS % 60)) s"

.PHONY: demo test pytest cargo-test lint fmt-check clippy ruff stubtest bench bench-smoke gpu develop deps wheel clean

deps: $(DEPS)
develop: $(DEVELOP)

$(DEPS): requirements-dev.txt
	@$(call start,[set-up 1/2] Python packages into $(VENV): torch 2.13.0 and NNI 2.10.1 with the pins of requirements-dev.txt)
	echo "    first run: about 5 GB to download and unpack (torch with its CUDA libraries is most of it);"
	echo "    2-3 minutes on a fast connection, 10-20 on a slow one. Later runs: seconds."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --disable-pip-version-check -r requirements-dev.txt
	touch $@
	$(call done,Python packages)

# A first build compiles torch-sys's C++ wrapper and the crate (about 2-3 minutes on 2 cores);
# later builds after a Rust change recompile the crate only. When the package is already
# installed and its metadata (pyproject.toml) did not change, the extension is rebuilt in place
# (--skip-install) without maturin's pip pass over the dependencies.
$(DEVELOP): $(DEPS) $(RUST_INPUTS)
	@$(call start,[set-up 2/2] building the Rust extension with maturin develop --release (first build: 2-3 min on 2 cores))
	if [ -f $@ ] && ls $(VENV)/lib/python*/site-packages/proxyless_rs*.dist-info >/dev/null 2>&1 \
	      && ! echo "$?" | grep -qE 'pyproject.toml|\.deps'; then \
	    maturin develop --release --skip-install; \
	else \
	    maturin develop --release; \
	fi
	touch $@
	$(call done,Rust extension)

demo: $(DEVELOP)
	$(PY) examples/digits_search.py
	$(PY) examples/digits_nni.py
	$(PY) examples/digits_constrained.py

pytest: $(DEVELOP)
	@$(call start,pytest (about 1 min on 2 cores))
	$(PY) -m pytest -rs --durations=5
	$(call done,pytest)

# The first run compiles the crate's unit-test binary (about 1-2 min); later runs only run it.
cargo-test: $(DEPS)
	@$(call start,Rust unit tests: cargo test --release --lib)
	LD_LIBRARY_PATH=$(TORCH_LIB) cargo test --release --lib
	$(call done,Rust unit tests)

test: pytest cargo-test

# The gates. Each runs even if an earlier one failed; the target fails if any did.
lint: $(DEVELOP)
	@failed=""; \
	for gate in fmt-check clippy ruff stubtest; do \
	    $(MAKE) --no-print-directory $$gate || failed="$$failed $$gate"; \
	done; \
	if [ -n "$$failed" ]; then echo "==> lint: failed:$$failed"; exit 1; fi; \
	echo "==> lint: all gates pass"

fmt-check:
	@echo "==> cargo fmt --check (rustfmt.toml)"
	cargo fmt --check

# Checks only (no codegen), but the first run compiles torch-sys's build script for the dev
# profile (about 2 min).
clippy: $(DEPS)
	@$(call start,cargo clippy --all-targets -- -D warnings)
	cargo clippy --all-targets -- -D warnings
	$(call done,clippy)

ruff: $(DEPS)
	@echo "==> ruff check $(LINT_PATHS) ([tool.ruff] in pyproject.toml)"
	$(VENV)/bin/ruff check $(LINT_PATHS)

# The stubs python/proxyless_rs/_core.pyi against the compiled module.
stubtest: $(DEVELOP)
	@echo "==> python -m mypy.stubtest proxyless_rs._core ([tool.mypy] in pyproject.toml)"
	$(PY) -m mypy.stubtest proxyless_rs._core

bench: $(DEVELOP)
	$(PY) benchmarks/run.py

bench-smoke: $(DEVELOP)
	@$(call start,benchmark smoke run (tiny shapes))
	$(PY) benchmarks/run.py --smoke --out $(CURDIR)/target/bench-smoke
	$(call done,benchmark smoke run)

gpu: $(DEVELOP)
	bash scripts/gpu_check.sh

wheel: $(DEPS)
	$(PY) -m pip wheel --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) target dist
