#!/usr/bin/env bash
# `kilotok bench kernels` on a lent H100 or H200: every Triton kernel checked against its PyTorch reference
# and timed beside torch and torch.compile, next to the copy and matmul ceilings it measures first.
#
# The GPU image has torch, triton and kilotok's other needs but not `gguf` (which the CLI imports), and no
# package registry: carry its wheel (pure Python). Here, once, from the repository root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl gguf==0.19.0
# Then one device call: command `bash scripts/gpu/bench_kernels.sh`, carry [".whl"], timeout_s 480. The
# bench stops itself after BUDGET_S seconds (default 420), so a 15-minute lease (machine start included)
# leaves room for a shorter second call; the JSON under $OUT is rewritten after every case, so a stopped run
# keeps what it measured. Extra arguments go to `kilotok bench kernels` (e.g. --tokens 1 --no-compile).
#
# Size (estimated, not yet measured): 16 kernels, 126 cases over the three models below at 1, 8 and 64
# tokens (171 with Mixtral's layer, last), each checked once and timed in 3-4 implementations (triton,
# triton+pdl, torch, torch.compile) over 20 graph replays. Compiling the references dominates: about 126
# torch.compile graphs at a few seconds each, over BUDGET_S. So the run takes the issue's goal cases first
# (Llama-3.1-8B at 1 token, every kernel; the Maverick MoE layer at 1 and 8 tokens: kernel_registry.GOAL_CASES),
# then model by model; a second call made within the machine's 30 s warm window, with `--no-compile` (or
# `--kernels ... --tokens ...`), fills in the rest.
#
# Results under $OUT: bench_kernels.json (the figures), bench_kernels.log (the table and progress),
# gpu.txt (card, clocks, versions, whether this Triton has the PDL launch option).
set -uo pipefail

OUT=${OUT:-/tmp/kilotok-bench-kernels}
BUDGET_S=${BUDGET_S:-420}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv \
    | tee "$OUT/gpu.txt"
python3 - <<'PY' 2>&1 | tee -a "$OUT/gpu.txt"
import torch
import triton
from triton.backends.nvidia.compiler import CUDAOptions

print(f"torch {torch.__version__}, triton {triton.__version__}, capability {torch.cuda.get_device_capability()}, "
      f"launch_pdl option: {'launch_pdl' in CUDAOptions.__dataclass_fields__}")
PY

timeout --signal=INT --kill-after=20 "$BUDGET_S" python3 -m kilotok.cli bench kernels --mode gpu \
    --models llama-3.1-8b llama4-maverick-moe smollm2-135m mixtral-8x7b-moe --json-out "$OUT/bench_kernels.json" "$@" \
    2>&1 | tee "$OUT/bench_kernels.log"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || echo "bench kernels exited with status $status (124 or 130: stopped at BUDGET_S=$BUDGET_S s)"
exit "$status"
