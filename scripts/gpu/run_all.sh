#!/usr/bin/env bash
# One device call's worth: the GPU tests, then the end-to-end benchmark, each under its own budget so that
# a slow test run cannot take the benchmark's time. Run through the launcher (README: "GPU runs"):
#   bash scripts/gpu/launch.sh --budget 400 -- bash scripts/gpu/run_all.sh
# Arguments go to the benchmark. A CPU dry run of the whole path (tests skip, the bench runs --tiny):
#   DEVICE=cpu WHEELS=none PYTHON=.venv/bin/python bash scripts/gpu/launch.sh -- bash scripts/gpu/run_all.sh --tiny
set -uo pipefail

timeout --signal=INT --kill-after=20 "${TEST_BUDGET_S:-130}" bash scripts/gpu/test_gpu.sh
tests=$?
BENCH_BUDGET_S=${BENCH_BUDGET_S:-210} bash scripts/gpu/bench_e2e.sh "$@"
bench=$?
echo "run_all: tests exited $tests, bench exited $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
