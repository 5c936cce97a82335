#!/usr/bin/env bash
# The measurements of README "Supported torch versions": for each torch version, a fresh
# .venv-torch<release> (torch and requirements-nni2.txt), `pip install --no-build-isolation .`
# (build timed, from an empty cargo target dir), then the NNI 2.10 regression tests.
#
#   bash scripts/verify_span.sh 2.7.1 2.9.1 2.10.0 2.11.0 2.13.0
#   PROXYLESS_RS_TCH=0.26.0 bash scripts/verify_span.sh 2.14.1     # an experiment outside the span
#
# Prints one summary line per version; KEEP=1 keeps the venvs (else each is removed after its run,
# they take about 6 GB each). Logs go to target/verify-span/.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=target/verify-span
mkdir -p "$LOGS"
summary=()
for torch in "$@"; do
    release=$(echo "$torch" | cut -d. -f1,2)
    venv=.venv-torch$release
    log=$LOGS/torch-$torch.log
    rm -rf "$venv" "target/pep517/torch-$release"
    SECONDS=0
    make regression-env TORCH="$torch" > "$log.env" 2>&1 || true
    env_s=$(grep -o 'torch [0-9.]* and the NNI 2.10 stack: done in .*' "$log.env" | tail -1)
    build=$(grep -o 'proxyless-rs built against torch .*: done in .*' "$log.env" | tail -1)
    if [ -n "$build" ]; then
        make test-regression TORCH="$torch" > "$log" 2>&1
        result=$(grep -E '^=+ .*(passed|failed|error).* in ' "$log" | tail -1 | tr -d '=')
    else
        result="BUILD FAILED (see $log.env)"
    fi
    summary+=("torch $torch: env [${env_s:-?}] build [${build:-failed}] tests [${result}]")
    echo "${summary[-1]}"
    [ "${KEEP:-0}" = 1 ] || rm -rf "$venv"
done
printf '%s\n' "${summary[@]}" > "$LOGS/summary-$(date +%s).txt"
