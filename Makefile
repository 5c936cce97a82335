# One entry point for people and CI. Every target creates the virtual environment it needs, and
# a target whose inputs did not change since its last run does not redo its work.
#   make demo     set up, build, run the digits search (NNI's layers and ours, side by side), from a
#                 plain PyTorch script and through NNI's RetiariiExperiment
#   make test     set up, build, run the pytest suite and the Rust unit tests
#   make lint     set up, build, run the gates: cargo fmt --check, cargo clippy -D warnings, ruff, mypy, stubtest
#   make bench    set up, build, run the benchmarks (speed; memory and step time on the paper's space; value
#                 choices: searches with a known answer, a search step on NNI's MobileNetV3 and AutoFormer;
#                 collectives per step; a search step against the same step in plain torch, the floor)
#   make gpu      set up, build, run everything that needs a GPU (scripts/gpu_check.sh)
#   make wheel    build a wheel into dist/ against the torch of .venv (2.13), the way
#                 `pip install --no-build-isolation .` builds (build_backend/proxyless_build/)
#   make wheel-check      install that wheel into a fresh venv with no Rust or C++ on PATH, run tests
#   make test-nni3        the test suite under NNI 3.0's own stack (.venv-nni3: requirements-nni3.txt,
#                 torch 2.0.0, proxyless-rs built against it by `pip install --no-build-isolation .`)
#   make test-regression TORCH=2.7.1   the NNI 2.10 regression tests on another torch of the span:
#                 .venv-torch2.7 gets torch==2.7.1 and requirements-nni2.txt, then proxyless-rs
#                 through `pip install --no-build-isolation .` (which leaves that torch in place)
#   make span     every release of torch-span.toml, one after another: build, regression tests, its
#                 wheel and the wheel's tests without a compiler (scripts/span.py; the table in
#                 docs/torch-span.md). About 6-8 min a release on 2 cores. SPAN_ARGS="2.0 2.15" for some.
#   make wheels   the wheel of every release into dist/wheels/ (scripts/span.py wheels)
#   make hub-matrix       NNI's hub x strategy matrix, its Proxyless row (27 spaces), under both NNIs
#   make multinode        several machines as two torchrun node groups on this one, under both NNIs
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
TORCH_DIR = $(shell $(PY) -c "import importlib.util as u; print(u.find_spec('torch').submodule_search_locations[0])" 2>/dev/null)
TORCH_LIB = $(TORCH_DIR)/lib
# torch-sys reads LIBTORCH_USE_PYTORCH as a flag but reruns its build script when its value
# changes: the torch directory as its value relinks against the right torch when a shared
# CARGO_TARGET_DIR (CI) sees the venv of another checkout.
export LIBTORCH_USE_PYTORCH = $(TORCH_DIR)

# Where cargo builds: .venv's builds in TARGET_ROOT, pip's builds for each torch release in
# TARGET_ROOT/pep517/torch-<release> (the build backend's own default). CI points TARGET_ROOT at a
# persistent cache, so that a fresh clone does not rebuild every crate.
TARGET_ROOT ?= $(CURDIR)/target
export CARGO_TARGET_DIR ?= $(TARGET_ROOT)

# The regression environments: one venv per torch release, e.g. make test-regression TORCH=2.7.1.
TORCH ?= 2.7.1
TORCH_RELEASE = $(word 1,$(subst ., ,$(TORCH))).$(word 2,$(subst ., ,$(TORCH)))
REG_VENV = .venv-torch$(TORCH_RELEASE)
# The regression tests are the modules marked `regression` (pytest -m regression; the marker is
# registered in pyproject.toml): what runs on the other torch releases of the span.
NNI3_VENV = .venv-nni3
# NNI 3.0's own stack pins torch 2.0.0 (requirements-nni3.txt).
NNI3_TORCH := $(shell sed -n 's/^torch==//p' requirements-nni3.txt)
NNI3_RELEASE = $(word 1,$(subst ., ,$(NNI3_TORCH))).$(word 2,$(subst ., ,$(NNI3_TORCH)))
WHEEL_STAMP := dist/.wheel

DEPS := $(VENV)/.deps
DEVELOP := $(VENV)/.develop
RUST_INPUTS := $(wildcard src/*.rs src/*/*.rs) build.rs Cargo.toml Cargo.lock pyproject.toml torch-span.toml .cargo/config.toml
# What a wheel (or a pip install) is built from.
PACKAGE_INPUTS := $(RUST_INPUTS) $(wildcard build_backend/*/*.py) $(shell find python -name '*.py' -o -name '*.pyi' -o -name py.typed)
LINT_PATHS := python tests benchmarks examples build_backend scripts

# $(call start,WHAT) / $(call done,WHAT): a phase's first and last lines, the last with its duration.
# $(call watch,WHAT) before a long command: its output passed through, and a line every 30 s it
# stays silent (torch-sys's C++ wrapper and pip's downloads print nothing for minutes).
# $(call watch,WHAT,REGEX) also leaves out the lines that match REGEX.
watch = $(PYTHON) scripts/heartbeat.py --what "$(1)" $(if $(2),--drop '$(2)') --
PIP_NOISE := ^ *(Requirement already satisfied|Link requires|Skipping link|Found link)
start = echo "==> $(1)"; SECONDS=0
done = echo "    $(1): done in $$((SECONDS / 60)) min $$((SECONDS % 60)) s"

.PHONY: demo test pytest cargo-test lint fmt-check clippy ruff mypy stubtest bench bench-smoke hub-matrix multinode gpu develop deps wheel \
	wheel-check test-nni3 checkpoint-fixtures demo-nni3 nni3-env test-regression regression-env span wheels clean

deps: $(DEPS)
develop: $(DEVELOP)

$(DEPS): requirements-dev.txt requirements-nni2.txt
	@$(call start,[set-up 1/2] Python packages into $(VENV): torch 2.13.0 and NNI 2.10.1 with the pins of requirements-dev.txt and requirements-nni2.txt)
	echo "    first run: about 3 GB to download, 6 GB unpacked (torch with its CUDA libraries is most of it);"
	echo "    3-5 minutes on a fast connection, 10-20 on a slow one. Later runs: seconds."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --upgrade pip
	$(call watch,pip install into $(VENV)) $(PY) -m pip install --disable-pip-version-check -r requirements-dev.txt
	touch $@
	$(call done,Python packages)

# A first build compiles torch-sys's C++ wrapper and the crate (about 6 minutes on 2 cores);
# later builds after a Rust change recompile the crate only. When the package is already
# installed and its metadata (pyproject.toml) did not change, the extension is rebuilt in place
# (--skip-install) without maturin's pip pass over the dependencies.
$(DEVELOP): $(DEPS) $(RUST_INPUTS)
	@$(call start,[set-up 2/2] building the Rust extension with maturin develop --release (first build: about 6 min on 2 cores))
	if [ -f $@ ] && ls $(VENV)/lib/python*/site-packages/proxyless_rs*.dist-info >/dev/null 2>&1 \
	      && ! echo "$?" | grep -qE 'pyproject.toml|\.deps'; then \
	    $(call watch,maturin develop) maturin develop --release --skip-install; \
	else \
	    $(call watch,maturin develop) maturin develop --release; \
	fi
	touch $@
	$(call done,Rust extension)

# The NNI 2.10 searches first; then the NNI 3.0 one, in .venv-nni3 (made on first use:
# requirements-nni3.txt and proxyless-rs built against its torch), so the first results come
# before the second environment's minutes of set-up.
# Each command is announced as it starts (.ONESHELL would otherwise echo them all at once).
demo: $(DEVELOP)
	@for example in digits_search digits_nni digits_constrained digits_retrain; do
	    echo "==> $(PY) examples/$$example.py"
	    $(PY) examples/$$example.py
	done
	echo "==> the NNI 3.0 search (make demo-nni3; first run: .venv-nni3, a second torch and build)"
	$(MAKE) --no-print-directory demo-nni3

# Each writes its output to target/ as well, for the one summary line of `make test`.
# The heartbeat says so when a long test keeps pytest silent (the resume tests' searches take a minute).
pytest: $(DEVELOP)
	@$(call start,pytest (about 7 min on 2 cores))
	mkdir -p target
	$(call watch,pytest) $(PY) -m pytest -rs --durations=5 2>&1 | tee target/pytest.log
	$(call done,pytest)

# The first run compiles the crate's unit-test binary (about 1-2 min); later runs only run it.
cargo-test: $(DEPS)
	@$(call start,Rust unit tests: cargo test --release --lib)
	mkdir -p target
	LD_LIBRARY_PATH=$(TORCH_LIB) $(call watch,cargo test) cargo test --release --lib 2>&1 | tee target/cargo-test.log
	$(call done,Rust unit tests)

test: pytest cargo-test
	@py=$$(grep -E '^=+ .*(passed|failed).* in ' target/pytest.log | tail -1 | sed -E 's/^=+ //; s/ in [0-9.]+s.*//'); \
	rs=$$(grep -E '^test result:' target/cargo-test.log | tail -1 | sed -E 's/^test result: [a-zA-Z]+\. //; s/;.*measured.*//'); \
	echo "==> make test: pytest $$py; cargo test $$rs"

# The gates. Each runs even if an earlier one failed; the target fails if any did.
lint: $(DEVELOP)
	@failed=""; \
	for gate in fmt-check clippy ruff mypy stubtest; do \
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
	$(call watch,cargo clippy) cargo clippy --all-targets -- -D warnings
	$(call done,clippy)

ruff: $(DEPS)
	@echo "==> ruff check $(LINT_PATHS) ([tool.ruff] in pyproject.toml)"
	$(VENV)/bin/ruff check $(LINT_PATHS)

# The type checker on the package ([tool.mypy] in pyproject.toml; NNI 2.10's stack of .venv: the NNI
# 3.0 adapter's imports of NNI 3.0-only modules are untyped there).
mypy: $(DEPS)
	@echo "==> mypy python/proxyless_rs ([tool.mypy] in pyproject.toml)"
	$(PY) -m mypy python/proxyless_rs

# The stubs python/proxyless_rs/_core.pyi against the compiled module.
stubtest: $(DEVELOP)
	@echo "==> python -m mypy.stubtest proxyless_rs._core ([tool.mypy] in pyproject.toml)"
	$(PY) -m mypy.stubtest proxyless_rs._core

# Speed (benchmarks/run.py, NNI 2.10), then peak memory and step time on the paper's search space
# under NNI 2.10 and NNI 3.0, by depth and candidate count (benchmarks/memory.py): their tables
# and plots are those of docs/benchmarks.md.
MEMORY_ARGS ?= --depth 2 --depth 4 --depth 6
GROWTH_ARGS ?= --candidates 2 --candidates 4 --candidates 6
# Then value choices and cells: the searches with a known answer (ours beside NNI's DARTS) and a search
# step on NNI's MobileNetV3 and AutoFormer spaces and on the DARTS space at batch 64 (the ProxylessNAS
# paper's comparison; ours, NNI's DARTS and RandomOneShot), under both NNIs. Last, data-parallel search:
# collectives and time per step against depth, gloo on 2 and 4 processes.
SPACES_ARGS ?= --batch 8 --space mobilenetv3 --space autoformer
bench: $(DEVELOP) $(NNI3_VENV)/.installed
	$(PY) benchmarks/run.py
	rm -f benchmarks/results/memory.json
	$(PY) benchmarks/memory.py $(MEMORY_ARGS) $(GROWTH_ARGS) --out benchmarks/results/memory.json
	$(NNI3_VENV)/bin/python benchmarks/memory.py $(MEMORY_ARGS) --out benchmarks/results/memory.json
	$(PY) benchmarks/memory.py --table benchmarks/results/memory.json
	$(PY) benchmarks/memory.py --plot benchmarks/results/memory.json benchmarks/results/memory.png
	$(PY) benchmarks/value_choices.py
	$(NNI3_VENV)/bin/python benchmarks/value_choices.py
	rm -f benchmarks/results/spaces.json benchmarks/results/darts.json
	$(PY) benchmarks/spaces.py $(SPACES_ARGS) --out benchmarks/results/spaces.json
	$(NNI3_VENV)/bin/python benchmarks/spaces.py $(SPACES_ARGS) --out benchmarks/results/spaces.json
	$(PY) benchmarks/spaces.py --table benchmarks/results/spaces.json
	$(PY) benchmarks/spaces.py --space darts --batch 64 --out benchmarks/results/darts.json
	$(NNI3_VENV)/bin/python benchmarks/spaces.py --space darts --batch 64 --out benchmarks/results/darts.json
	$(PY) benchmarks/spaces.py --table benchmarks/results/darts.json --space darts
	$(PY) benchmarks/spaces.py --plot benchmarks/results/darts.json benchmarks/results/darts.png --space darts
	$(PY) benchmarks/distributed.py --out benchmarks/results/distributed.json
	$(PY) benchmarks/floor.py --out benchmarks/results/floor.json
	$(NNI3_VENV)/bin/python benchmarks/floor.py --out benchmarks/results/floor-nni3.json
	$(PY) benchmarks/draws.py

bench-smoke: $(DEVELOP)
	@$(call start,benchmark smoke run (tiny shapes))
	$(PY) benchmarks/run.py --smoke --out $(CURDIR)/target/bench-smoke
	rm -f target/bench-smoke/memory.json
	$(PY) benchmarks/memory.py --depth 1 --candidates 2 --growth-depth 1 --batch 2 --channels 4 --size 8 \
	    --steps 1 --memory-steps 1 --out target/bench-smoke/memory.json
	$(PY) benchmarks/memory.py --table target/bench-smoke/memory.json > target/bench-smoke/memory.md
	$(PY) benchmarks/memory.py --plot target/bench-smoke/memory.json target/bench-smoke/memory.png
	$(PY) benchmarks/value_choices.py --seeds 1 --warmup 2 --steps 3
	rm -f target/bench-smoke/spaces.json
	$(PY) benchmarks/spaces.py --space autoformer --space darts --method ours --method random --batch 2 --steps 1 \
	    --memory-steps 1 --out target/bench-smoke/spaces.json
	$(PY) benchmarks/spaces.py --table target/bench-smoke/spaces.json > target/bench-smoke/spaces.md
	$(PY) benchmarks/spaces.py --plot target/bench-smoke/spaces.json target/bench-smoke/darts.png --space darts
	$(PY) benchmarks/distributed.py --world 2 --layers 2 --steps 1 --out target/bench-smoke/distributed.json
	$(PY) benchmarks/floor.py --smoke --out target/bench-smoke/floor.json
	$(PY) benchmarks/floor.py --smoke --profile --out target/bench-smoke/floor-profile.json
	$(PY) benchmarks/draws.py --repeats 5
	$(call done,benchmark smoke run)

gpu: $(DEVELOP)
	bash scripts/gpu_check.sh

# The wheel of the torch in .venv: proxyless_rs-<version>+torch2.13-cp311-cp311-manylinux_2_xx_x86_64.whl
# (auditwheel gives the tag; libtorch is not in it). Same build as `pip install --no-build-isolation .`.
wheel: $(WHEEL_STAMP)
$(WHEEL_STAMP): $(DEPS) $(PACKAGE_INPUTS)
	@$(call start,wheel into dist/ against the torch of $(VENV) (first build: about 6 min on 2 cores))
	rm -f dist/proxyless_rs-*.whl
	CARGO_TARGET_DIR=$(TARGET_ROOT)/pep517/torch-2.13 $(call watch,pip wheel) $(PY) -m pip wheel --no-build-isolation --no-deps --wheel-dir dist .
	ls -l dist/proxyless_rs-*.whl
	touch $@
	$(call done,wheel)

# Installs the wheel into a fresh venv whose PATH has no cargo, rustc or C/C++ compiler, with
# torch and the NNI 2.10 stack from PyPI, and runs the regression tests there.
wheel-check: $(WHEEL_STAMP)
	@$(call start,wheel check: a fresh venv without Rust or a C++ compiler)
	bash scripts/wheel_check.sh dist/proxyless_rs-*.whl
	$(call done,wheel check)

# --- NNI 3.0 --------------------------------------------------------------------------------------
# .venv-nni3: NNI 3.0's own stack (requirements-nni3.txt: torch 2.0.0, pytorch-lightning 2.0, NNI 3.0)
# and proxyless-rs built against that torch, as its users install it.
nni3-env: $(NNI3_VENV)/.installed
$(NNI3_VENV)/.deps: requirements-nni3.txt
	@$(call start,[nni3 1/2] Python packages into $(NNI3_VENV): requirements-nni3.txt (torch $(NNI3_TORCH), NNI 3.0))
	test -x $(NNI3_VENV)/bin/python || $(PYTHON) -m venv $(NNI3_VENV)
	$(call watch,pip install into $(NNI3_VENV)) $(NNI3_VENV)/bin/python -m pip install --disable-pip-version-check -r requirements-nni3.txt
	touch $@
	$(call done,NNI 3.0 packages)
$(NNI3_VENV)/.installed: $(NNI3_VENV)/.deps $(PACKAGE_INPUTS)
	@$(call start,[nni3 2/2] pip install --no-build-isolation . into $(NNI3_VENV) (first build: about 6 min on 2 cores))
	CARGO_TARGET_DIR=$(TARGET_ROOT)/pep517/torch-$(NNI3_RELEASE) $(call watch,pip install .,$(PIP_NOISE)) \
	    $(NNI3_VENV)/bin/python -m pip install --disable-pip-version-check --no-build-isolation --no-deps -v .
	$(NNI3_VENV)/bin/python scripts/check_install.py $(NNI3_TORCH)
	touch $@
	$(call done,proxyless-rs built against torch $(NNI3_TORCH))

demo-nni3: $(NNI3_VENV)/.installed
	$(NNI3_VENV)/bin/python examples/digits_nni3.py

test-nni3: $(NNI3_VENV)/.installed
	@$(call start,pytest under NNI 3.0 ($(NNI3_VENV)))
	$(NNI3_VENV)/bin/python -m pytest -rs --durations=5
	$(call done,pytest under NNI 3.0)

# The checkpoints that tests/test_resume.py loads across NNI versions (tests/data/checkpoints/):
# a script's and the strategy's, one epoch of tests/resume_worker.py's searches under NNI 2.10
# (.venv) and under NNI 3.0 (.venv-nni3). Rewrite them when the checkpoint's layout changes.
checkpoint-fixtures: $(DEVELOP) $(NNI3_VENV)/.installed
	rm -rf target/checkpoint-fixtures
	mkdir -p tests/data/checkpoints
	for nni in nni2 nni3; do
	    python=$(PY); [ $$nni = nni3 ] && python=$(NNI3_VENV)/bin/python
	    for kind in script strategy; do
	        out=target/checkpoint-fixtures/$$nni-$$kind
	        mkdir -p $$out
	        $$python tests/resume_worker.py $$kind full $$out --epochs 1 > $$out/log.txt 2>&1 || { cat $$out/log.txt; exit 1; }
	    done
	    cp target/checkpoint-fixtures/$$nni-script/last.pt tests/data/checkpoints/$$nni-script.pt
	    cp target/checkpoint-fixtures/$$nni-strategy/last.ckpt tests/data/checkpoints/$$nni-strategy.ckpt
	done
	ls -l tests/data/checkpoints

# NNI's hub x strategy matrix (test/algo/nas at v2.10.1 and v3.0), its Proxyless row with NNI's skip
# removed: 27 spaces at NNI's sizes under each NNI (about 4 min under NNI 2.10, 6 under NNI 3.0, on 2
# cores). Outside `make test` and CI, as the span is; the hub spaces' own tests stay in both.
hub-matrix: $(DEVELOP) $(NNI3_VENV)/.installed
	@$(call start,NNI's hub matrix: the Proxyless row under NNI 2.10 and NNI 3.0)
	$(PY) -m pytest -rs -m matrix tests/test_hub.py
	$(NNI3_VENV)/bin/python -m pytest -rs -m matrix tests/test_hub.py
	$(call done,NNI's hub matrix)

# Several machines, as two torchrun node groups on this one (docs/distributed.md), under both NNIs;
# outside make test and CI, since gloo's teardown can hang on a loaded host (the test then fails
# after 3 min and kills the groups).
multinode: $(DEVELOP) $(NNI3_VENV)/.installed
	$(PY) -m pytest -rs -m multinode tests/test_distributed.py
	$(NNI3_VENV)/bin/python -m pytest -rs -m multinode tests/test_distributed.py

# --- other torch releases -------------------------------------------------------------------------
# $(REG_VENV): torch==$(TORCH) and the NNI 2.10 stack, then proxyless-rs the way a user with that
# torch installs it: `pip install --no-build-isolation .` (build_backend/proxyless_build/ picks
# the tch release; the build prints how long it took). Checks that torch is still $(TORCH) and
# that the installed package records it.
regression-env: $(REG_VENV)/.installed
$(REG_VENV)/.deps-$(TORCH): requirements-nni2.txt
	@$(call start,[torch $(TORCH) 1/2] Python packages into $(REG_VENV): torch==$(TORCH) and requirements-nni2.txt)
	test -x $(REG_VENV)/bin/python || $(PYTHON) -m venv $(REG_VENV)
	$(call watch,pip install into $(REG_VENV)) $(REG_VENV)/bin/python -m pip install --disable-pip-version-check "torch==$(TORCH)" -r requirements-nni2.txt
	rm -f $(REG_VENV)/.deps-* $(REG_VENV)/.installed
	touch $@
	$(call done,torch $(TORCH) and the NNI 2.10 stack)
$(REG_VENV)/.installed: $(REG_VENV)/.deps-$(TORCH) $(PACKAGE_INPUTS)
	@$(call start,[torch $(TORCH) 2/2] pip install --no-build-isolation . into $(REG_VENV) (first build: about 6 min on 2 cores))
	CARGO_TARGET_DIR=$(TARGET_ROOT)/pep517/torch-$(TORCH_RELEASE) $(call watch,pip install .,$(PIP_NOISE)) \
	    $(REG_VENV)/bin/python -m pip install --disable-pip-version-check --no-build-isolation -v .
	$(REG_VENV)/bin/python scripts/check_install.py $(TORCH)
	touch $@
	$(call done,proxyless-rs built against torch $(TORCH))

test-regression: $(REG_VENV)/.installed
	@$(call start,NNI 2.10 regression tests on torch $(TORCH) ($(REG_VENV)))
	$(REG_VENV)/bin/python -m pytest -rs -m regression
	$(call done,regression tests on torch $(TORCH))

# Every release of torch-span.toml (scripts/span.py: one venv at a time, removed after its run).
SPAN_ARGS ?=
span: $(DEPS)
	$(PY) scripts/span.py run --target-root $(TARGET_ROOT) $(SPAN_ARGS)

wheels: $(DEPS)
	$(PY) scripts/span.py wheels --target-root $(TARGET_ROOT) $(SPAN_ARGS)

clean:
	rm -rf $(VENV) $(NNI3_VENV) .venv-torch* .venv-span-* target dist
