#!/usr/bin/env bash
# Everything that needs a GPU, in one run, with its results written to one folder:
#   1. the CUDA tests: the device-parametrized regression, two-path and kernel tests on cuda,
#      tests/test_cuda.py (the binary-gate backward under torch.cuda.set_sync_debug_mode('error'):
#      no host round trip), and the NCCL search on two GPUs where there are two;
#   2. the benchmarks on the GPU (benchmarks/run.py --device cuda; benchmarks/floor.py --device cuda,
#      the floor ratios, and with --profile what each step runs; benchmarks/draws.py --device cuda,
#      a draw's cost; benchmarks/memory.py --device cuda, the paper space's peak memory and step time).
#
#   make gpu                                 # builds first if needed, then runs this
#   bash scripts/gpu_check.sh [OUT]          # in a set-up checkout; OUT defaults to gpu-results/<UTC time>
#   GPU_BENCH_ARGS=--smoke bash scripts/gpu_check.sh   # tiny benchmark shapes (a quick check)
#
# Writes OUT/nvidia-smi.txt, OUT/environment.txt, OUT/pytest-cuda.txt (+ .xml), OUT/bench/
# (results.json, results.md, speedup.png) and OUT/summary.txt. Exits non-zero if a CUDA test
# failed or the benchmarks failed; CUDA tests skipped (e.g. NCCL with one GPU) are listed.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
OUT=${1:-gpu-results/$(date -u +%Y%m%dT%H%M%SZ)}
export PYTHONUNBUFFERED=1

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: CUDA is not available to $PY (torch.cuda.is_available() is False); nothing to run." >&2
    exit 2
fi

mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not found" > "$OUT/nvidia-smi.txt"
"$PY" - > "$OUT/environment.txt" <<'EOF'
import platform, torch
print('python', platform.python_version())
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())
for i in range(torch.cuda.device_count()):
    print(f'cuda:{i}', torch.cuda.get_device_name(i))
EOF
cat "$OUT/environment.txt"

status=0
SECONDS=0
echo "==> [1/2] CUDA tests (pytest -k 'cuda or nccl')"
"$PY" -m pytest -k 'cuda or nccl' -rs -v --junitxml="$OUT/pytest-cuda.xml" 2>&1 | tee "$OUT/pytest-cuda.txt"
tests_status=${PIPESTATUS[0]}
[ "$tests_status" -eq 0 ] || status=1
echo "    CUDA tests: exit $tests_status, $SECONDS s"

SECONDS=0
echo "==> [2/2] benchmarks on the GPU (benchmarks/run.py --device cuda ${GPU_BENCH_ARGS:-})"
# shellcheck disable=SC2086  # GPU_BENCH_ARGS is a list of options
"$PY" benchmarks/run.py --device cuda --out "$OUT/bench" ${GPU_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt"
bench_status=${PIPESTATUS[0]}
[ "$bench_status" -eq 0 ] || status=1
# The floor: a search step against the same step in plain torch (GPU_BENCH_ARGS=--smoke applies here too).
# shellcheck disable=SC2086
"$PY" benchmarks/floor.py --device cuda --out "$OUT/bench/floor.json" ${GPU_BENCH_ARGS:-} 2>&1 | tee "$OUT/floor.txt"
floor_status=${PIPESTATUS[0]}
[ "$floor_status" -eq 0 ] || { status=1; bench_status=$floor_status; }
# What a draw costs on the device, beside NNI's draw.
"$PY" benchmarks/draws.py --device cuda 2>&1 | tee "$OUT/draws.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; bench_status=1; }
# What each step runs, ours against the floor (operators, kernel launches, copies, syncs).
# shellcheck disable=SC2086
"$PY" benchmarks/floor.py --device cuda --profile --out "$OUT/bench/floor-profile.json" ${GPU_BENCH_ARGS:-} 2>&1 \
    | tee "$OUT/floor-profile.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; bench_status=1; }
# The paper space's peak memory and step time, NNI's layers (ProxylessNAS and DARTS) beside ours.
"$PY" benchmarks/memory.py --device cuda --steps 10 --out "$OUT/bench/memory-cuda.json" 2>&1 | tee "$OUT/memory.txt"
memory_status=${PIPESTATUS[0]}
[ "$memory_status" -eq 0 ] || { status=1; bench_status=$memory_status; }
echo "    benchmarks: exit $bench_status, $SECONDS s"

{
    echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    cat "$OUT/environment.txt"
    echo
    echo "CUDA tests (exit $tests_status):"
    grep -E '^(=+ .*(passed|failed|error).* =+|SKIPPED|FAILED|ERROR)' "$OUT/pytest-cuda.txt" || true
    echo
    echo "benchmarks (exit $bench_status): $OUT/bench/results.md"
    [ -f "$OUT/bench/results.md" ] && cat "$OUT/bench/results.md"
    [ -f "$OUT/bench/floor.md" ] && cat "$OUT/bench/floor.md"
    [ -f "$OUT/draws.txt" ] && cat "$OUT/draws.txt"
    [ -f "$OUT/bench/floor-profile.md" ] && cat "$OUT/bench/floor-profile.md"
    [ -f "$OUT/bench/memory-cuda.json" ] && "$PY" benchmarks/memory.py --table "$OUT/bench/memory-cuda.json"
} > "$OUT/summary.txt"
echo "==> results in $OUT (summary: $OUT/summary.txt)"
exit $status
