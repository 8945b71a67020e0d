#!/usr/bin/env bash
# `kilotok bench kernels` on a lent H100 or H200: every Triton kernel checked against its PyTorch reference
# and timed beside torch and torch.compile, next to the copy and matmul ceilings it measures first.
# Run it through the launcher (README: "GPU runs"), which installs the carried wheels (the CLI imports
# `gguf`) and records the card; it needs no model file:
#   run(command="bash scripts/gpu/launch.sh --budget 420 -- bash scripts/gpu/bench_kernels.sh",
#       carry=[".whl"], timeout_s=480)
# The JSON under $OUT is rewritten after every case, so a run stopped at the budget keeps what it measured.
# Extra arguments go to `kilotok bench kernels` (e.g. --tokens 1 --no-compile for a quick pass).
#
# Size (estimated, not yet measured): 16 kernels, 126 cases over the three models below at 1, 8 and 64
# tokens (171 with Mixtral's layer, last), each checked once and timed in 3-4 implementations (triton,
# triton+pdl, torch, torch.compile) over 20 graph replays. Compiling the references dominates: about 126
# torch.compile graphs at a few seconds each, over the budget. So the run takes the goal cases first
# (Llama-3.1-8B at 1 token, every kernel; the Maverick MoE layer at 1 and 8 tokens: kernel_registry.GOAL_CASES),
# then model by model; a second call made within the machine's 30 s warm window, with `--no-compile` (or
# `--kernels ... --tokens ...`), fills in the rest.
# Results under $OUT: bench_kernels.json; the table and progress are in the launcher's log.
set -uo pipefail

OUT=${OUT:-/tmp/kilotok-out}
exec "${PYTHON:-python3}" -m kilotok.cli bench kernels --mode gpu \
    --models llama-3.1-8b llama4-maverick-moe smollm2-135m mixtral-8x7b-moe --json-out "$OUT/bench_kernels.json" "$@"
