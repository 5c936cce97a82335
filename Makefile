# One entry point for people and CI. Every target creates the virtual environment it needs.
#   make demo   set up, build, run the digits search (NNI's layers and ours, side by side), from a
#               plain PyTorch script and through NNI's RetiariiExperiment
#   make test   set up, build, run the pytest suite and the Rust unit tests
#   make bench  set up, build, run the benchmark harness
#   make wheel  build a wheel into dist/ the way `pip install .` does

PYTHON ?= python3
VENV ?= .venv
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)
PY := $(VIRTUAL_ENV)/bin/python
# torch-sys's build script finds libtorch through this interpreter (LIBTORCH_USE_PYTORCH=1 is
# set in .cargo/config.toml); the Rust test binary loads libtorch from the same place.
TORCH_LIB = $(shell $(PY) -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")

.PHONY: demo test pytest cargo-test bench bench-smoke develop wheel clean

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

develop: $(VENV)/.deps
	maturin develop --release --quiet

demo: develop
	$(PY) examples/digits_search.py
	$(PY) examples/digits_nni.py

pytest: develop
	$(PY) -m pytest

cargo-test: $(VENV)/.deps
	LD_LIBRARY_PATH=$(TORCH_LIB) cargo test --release --lib

test: pytest cargo-test

bench: develop
	$(PY) benchmarks/run.py

bench-smoke: develop
	$(PY) benchmarks/run.py --smoke

wheel: $(VENV)/.deps
	$(PY) -m pip wheel --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) target dist
