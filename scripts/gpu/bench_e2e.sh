#!/usr/bin/env bash
# `kilotok bench gpu`: the end-to-end GPU benchmark (bench/gpu.py) on a lent GPU, through the launcher,
# which carries the default model and the wheels:
#   bash scripts/gpu/launch.sh --budget 450 -- bash scripts/gpu/bench_e2e.sh
# The bench starts no case after BENCH_BUDGET_S seconds (default 400) and rewrites $OUT/bench_e2e.json
# after every case; extra arguments go to `kilotok bench gpu` (e.g. --sections dense moe).
set -uo pipefail

OUT=${OUT:-/tmp/kilotok-out}
export TRITON_INTERPRET=0
exec "${PYTHON:-python3}" -m kilotok.cli bench gpu --device "${DEVICE:-cuda}" --budget-s "${BENCH_BUDGET_S:-400}" \
    --json-out "$OUT/bench_e2e.json" "$@"
