#!/usr/bin/env bash
# `kilotok bench kernels` on a lent H100 or H200: every Triton kernel checked against its PyTorch reference
# and timed beside torch and torch.compile, next to the copy and matmul ceilings it measures first.
# Run it through the launcher (README: "GPU runs"), which installs the carried wheels (the CLI imports
# `gguf`) and records the card; it needs no model file:
#   run(command="bash scripts/gpu/launch.sh --budget 300 -- bash scripts/gpu/bench_kernels.sh",
#       carry=[".whl"], timeout_s=340)
# The JSON under $OUT is rewritten after every case, so a run stopped at the budget keeps what it measured.
# Extra arguments go to `kilotok bench kernels` (e.g. --tokens 1 --no-compile for a quick pass).
# Results under $OUT: bench_kernels.json; the table and progress are in the launcher's log.
set -uo pipefail

OUT=${OUT:-/tmp/kilotok-out}
exec "${PYTHON:-python3}" -m kilotok.cli bench kernels --mode gpu --models llama-3.1-8b smollm2-135m llama4-maverick-moe \
    --json-out "$OUT/bench_kernels.json" "$@"
