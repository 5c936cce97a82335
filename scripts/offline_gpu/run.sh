#!/usr/bin/env bash
# The GPU check on a machine without network, Rust or NNI: from the repo root, with .gpu carried,
#     OUT=/some/dir bash scripts/offline_gpu/run.sh
# Uses ${PY:-python3} (torch 2.11 on CPython 3.12). Installs nothing outside /tmp and the working copy:
#   .gpu/wheels/*.whl   proxyless_rs built here against torch 2.11.0+cu130 for cp312 (its _core is copied
#                       into python/proxyless_rs/, which is where the tests and benchmarks import it from)
#   .gpu/site/          NNI 2.10.1 (no web UI), pytorch-lightning 1.9.5, torchmetrics 0.10.3 and the pure-Python
#                       packages they import, first on PYTHONPATH (see scripts/offline_gpu/make-site.sh)
#   .gpu/numpy1/        numpy 1.26.4 (cp312), used only where the machine's scipy, sklearn, pandas and matplotlib
#                       import under it and the tests collect (scipy >= 1.18 and pandas 3 need numpy 2: then the
#                       machine's numpy 2.x, under which Lightning 1.9.5 runs with np.Inf -> np.inf in .gpu/site)
# Then the steps of scripts/gpu_check.sh, each under a timeout so that all ends within ~GPU_BUDGET_S (560 s):
#   CUDA tests (pytest -k 'cuda or nccl', <= 150 s), benchmarks/floor.py --device cuda (<= 120 s; it also
#   checks its alpha gradient against ours), benchmarks/draws.py --device cuda (<= 60 s), floor.py --profile
#   (<= 90 s: operators, kernel launches and syncs per step, ours and the floor's), benchmarks/memory.py
#   --device cuda (<= 240 s; the paper space's peak memory and step time, NNI's layers beside ours),
#   benchmarks/run.py --device cuda (the rest of the budget, full shapes; GPU_BENCH_ARGS=--smoke for tiny
#   ones). On an H200 (2026-12-04) the tests took 47 s, the floor 35 s, draws.py about 15 s, memory.py about
#   20 s a configuration (12: mostly starting a process that imports NNI) and run.py 174 s.
#   GPU_STEPS names the steps to run (default "tests floor draws profile memory bench").
#   RUN_ON_CPU=1 runs the same steps on the CPU where there is no CUDA (a rehearsal of this script; the CUDA
#   tests are then skipped).
# Results: gpu-results/run/ (summary.txt, logs, bench/), tarred to $OUT/gpu-results.tgz; summary.txt, run.log
# and the pytest log copied to $OUT as well. Exit status: 0 if every step passed, else 1.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-out}
RES=gpu-results/run
BUDGET=${GPU_BUDGET_S:-560}
# Step limits (s). The benchmarks (run.py) run last and get all that is left of the budget.
T_TESTS=${T_TESTS:-150}
T_FLOOR=${T_FLOOR:-120}
T_MEMORY=${T_MEMORY:-240}
# Benchmark shapes: full by default; GPU_BENCH_ARGS=--smoke for the tiny ones.
BENCH_ARGS=${GPU_BENCH_ARGS:-}
# Which steps run (a short run when device time is scarce): GPU_STEPS="tests floor draws profile" skips
# memory.py and run.py.
STEPS=" ${GPU_STEPS:-tests floor draws profile memory bench} "
wants() { [[ "$STEPS" == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
# Without coreutils' timeout the steps run unbounded (`timeout -s INT -k 20 SECS CMD...` -> CMD...).
command -v timeout > /dev/null || timeout() { shift 5; "$@"; }
mkdir -p "$OUT" "$RES"
rm -rf "${RES:?}"/*
START=$SECONDS

finish() {
    trap - EXIT INT TERM
    [ -f "$RES/summary.txt" ] || echo "run.sh ended early (see run.log)" > "$RES/summary.txt"
    tar czf "$OUT/gpu-results.tgz" gpu-results 2>/dev/null || tar czf "$OUT/gpu-results.tgz" "$RES"
    for f in summary.txt run.log pytest-cuda.txt; do [ -f "$RES/$f" ] && cp "$RES/$f" "$OUT/"; done
    return 0
}
trap finish EXIT
trap 'echo "run.sh: interrupted" >> "$RES/run.log"; exit 130' INT TERM

# Seconds left for a step: its own limit, or what the budget has left less 15 s for the end.
limit() {
    local left=$((BUDGET - (SECONDS - START) - 15))
    [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"
}

# Runs a step under `timeout -s INT` (pytest writes its summary and XML on SIGINT), logging to $RES/$1.txt.
step() {
    local name=$1 secs; secs=$(limit "$2"); shift 2
    echo "==> $name (limit ${secs} s): $*"
    local t0=$SECONDS
    timeout -s INT -k 20 "$secs" "$@" > "$RES/$name.txt" 2>&1
    local rc=$?
    tail -n 25 "$RES/$name.txt"
    [ "$rc" -eq 124 ] && echo "    $name: TIMED OUT after ${secs} s"
    echo "    $name: exit $rc, $((SECONDS - t0)) s"
    echo "$name: exit $rc, $((SECONDS - t0)) s (limit ${secs} s)" >> "$RES/steps.txt"
    return "$rc"
}

main() {
    echo "run.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) in $ROOT, PY=$PY ($(command -v "$PY"))"

    echo "==> setup: our wheel, the site folder, numpy"
    rm -rf /tmp/ours /tmp/gpu-numpy1
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/ours .gpu/wheels/*.whl; then
        echo "pip refused the wheel; unzipping it instead"
        "$PY" -m zipfile -e .gpu/wheels/*.whl /tmp/ours
    fi
    local core; core=$(ls /tmp/ours/proxyless_rs/_core.cpython-312-*.so 2>/dev/null | head -1)
    if [ -z "$core" ]; then echo "setup: no cp312 _core in the wheel" ; return 1; fi
    cp -f "$core" python/proxyless_rs/
    for other in python/proxyless_rs/_core*.so; do
        [ "$(basename "$other")" = "$(basename "$core")" ] || echo "WARNING: $other is also there (another build)"
    done
    # numpy 1.26.4 where the machine's compiled packages take it; else the machine's numpy (2.x).
    "$PY" -m zipfile -e .gpu/numpy1/numpy-1.26.4-*.whl /tmp/gpu-numpy1
    local base="$ROOT/.gpu/site:$ROOT/python:/tmp/ours"
    # The probe: what the steps import (the benchmarks' matplotlib; every test module at collection, sklearn's
    # datasets among them), under numpy 1.26.4.
    local probe='import numpy, scipy.sparse, sklearn.datasets, matplotlib.pyplot, pandas, pytorch_lightning, nni.retiarii'
    if PYTHONPATH="/tmp/gpu-numpy1:$base" "$PY" -W ignore -c "$probe" > "$RES/numpy1-probe.txt" 2>&1 &&
        PYTHONPATH="/tmp/gpu-numpy1:$base" timeout -s INT -k 10 60 "$PY" -m pytest -p no:cacheprovider -q --co -k 'cuda or nccl' \
            >> "$RES/numpy1-probe.txt" 2>&1; then
        export PYTHONPATH="/tmp/gpu-numpy1:$base"
        echo "numpy: 1.26.4 from .gpu/numpy1 (the machine's compiled packages import under it)"
    else
        export PYTHONPATH="$base"
        echo "numpy: the machine's (numpy 1.26.4 probe failed: $(tail -n 1 "$RES/numpy1-probe.txt"))"
    fi
    echo "PYTHONPATH=$PYTHONPATH"

    "$PY" - <<'EOF' 2>&1 | tee "$RES/environment.txt"
import platform, sys, warnings
warnings.simplefilter('ignore')
import torch, numpy, nni, pytorch_lightning, torchmetrics, proxyless_rs
from proxyless_rs import _core
print('python', platform.python_version(), sys.executable)
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version(),
      'cuda available', torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    print(f'cuda:{i}', torch.cuda.get_device_name(i))
print('numpy', numpy.__version__, numpy.__file__)
print('nni', nni.__version__, nni.__file__)
print('pytorch_lightning', pytorch_lightning.__version__, 'torchmetrics', torchmetrics.__version__)
print('proxyless_rs', proxyless_rs.__version__, proxyless_rs.__file__)
print('proxyless_rs._core', _core.__file__, 'built against torch', _core.TORCH_VERSION)
EOF
    local env_status=${PIPESTATUS[0]}
    nvidia-smi > "$RES/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not found" > "$RES/nvidia-smi.txt"
    head -n 20 "$RES/nvidia-smi.txt"
    if [ "$env_status" -ne 0 ]; then echo "setup: the imports failed (above)"; return 1; fi

    local dev=cuda
    "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || dev=none
    [ "$dev" = none ] && [ "${RUN_ON_CPU:-0}" = 1 ] && dev=cpu
    local status=0 tests_status=skipped bench_status=skipped floor_status=skipped memory_status=skipped
    if [ "$dev" = none ]; then
        echo "CUDA is not available to $PY: no step runs (RUN_ON_CPU=1 runs them on the CPU)"
        status=2
    else
        [ "$dev" = cpu ] && echo "RUN_ON_CPU=1 and no CUDA: the steps run on the CPU"
        # 1. The CUDA tests (as scripts/gpu_check.sh).
        if wants tests; then
            step pytest-cuda "$T_TESTS" "$PY" -m pytest -p no:cacheprovider -k 'cuda or nccl' -rs -v \
                --junitxml="$RES/pytest-cuda.xml"
            tests_status=$?; [ "$tests_status" -eq 0 ] || status=1
        fi
        # 2. The floor (a search step against plain torch; fails if its alpha gradient differs from ours).
        if wants floor; then
            # shellcheck disable=SC2086
            step floor "$T_FLOOR" "$PY" benchmarks/floor.py --device "$dev" --out "$RES/bench/floor.json" $BENCH_ARGS
            floor_status=$?; [ "$floor_status" -eq 0 ] || status=1
        fi
        # What a draw costs on the device (the floor's largest part on a GPU), beside NNI's draw.
        if wants draws; then step draws 60 "$PY" benchmarks/draws.py --device "$dev" || status=1; fi
        # What each step runs, ours against the floor: operators, kernel launches, copies, syncs.
        if wants profile; then
            # shellcheck disable=SC2086
            step floor-profile 90 "$PY" benchmarks/floor.py --device "$dev" --profile \
                --out "$RES/bench/floor-profile.json" $BENCH_ARGS || status=1
        fi
        # 3. The paper space's peak memory and time per search step (each configuration's line in memory.txt
        #    as it ends; the JSON at the end).
        if wants memory; then
            step memory "$T_MEMORY" "$PY" benchmarks/memory.py --device "$dev" --steps 10 \
                --out "$RES/bench/memory-cuda.json"
            memory_status=$?; [ "$memory_status" -eq 0 ] || status=1
        fi
        # 4. The benchmarks against NNI 2.10, with the rest of the budget (results only at their end; each
        #    case's line is in bench.txt as it ends).
        if wants bench; then
            # shellcheck disable=SC2086
            step bench "$BUDGET" "$PY" benchmarks/run.py --device "$dev" --out "$RES/bench" $BENCH_ARGS
            bench_status=$?; [ "$bench_status" -eq 0 ] || status=1
        fi
    fi

    {
        echo "gpu run.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), $((SECONDS - START)) s in all, bench args: '${BENCH_ARGS}'"
        cat "$RES/environment.txt"
        echo
        [ -f "$RES/steps.txt" ] && cat "$RES/steps.txt"
        echo
        echo "CUDA tests (exit $tests_status):"
        [ -f "$RES/pytest-cuda.txt" ] && { grep -E '^(=+ .*(passed|failed|error|skipped|deselected).* =+|SKIPPED|FAILED|ERROR)' "$RES/pytest-cuda.txt" || true; }
        echo
        echo "floor (exit $floor_status):"
        [ -f "$RES/bench/floor.md" ] && cat "$RES/bench/floor.md"
        [ -f "$RES/bench/floor.md" ] || tail -n 30 "$RES/floor.txt" 2>/dev/null
        echo
        echo "draws:"
        cat "$RES/draws.txt" 2>/dev/null
        echo
        echo "floor profile (per step):"
        cat "$RES/bench/floor-profile.md" 2>/dev/null
        echo
        echo "memory (exit $memory_status):"
        if [ -f "$RES/bench/memory-cuda.json" ]; then "$PY" benchmarks/memory.py --table "$RES/bench/memory-cuda.json"
        else grep -E 'MiB' "$RES/memory.txt" 2>/dev/null; fi
        echo
        echo "benchmarks (exit $bench_status):"
        if [ -f "$RES/bench/results.md" ]; then cat "$RES/bench/results.md"
        else echo "(no results.md: the cases that ended, from bench.txt)"; grep -E ' ms|us,|memory:' "$RES/bench.txt" 2>/dev/null; tail -n 15 "$RES/bench.txt" 2>/dev/null; fi
    } > "$RES/summary.txt"
    echo "==> done in $((SECONDS - START)) s: status $status; summary:"
    cat "$RES/summary.txt"
    return "$status"
}

main 2>&1 | tee "$RES/run.log"
rc=${PIPESTATUS[0]}
finish
exit "$rc"
