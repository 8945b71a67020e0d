#!/usr/bin/env bash
# The GPU test run: every test marked `gpu` (seeded sampling, the paged KV cache, speculation and the server
# on CUDA with the torch and Triton backends), on a lent GPU through the launcher, which carries the model
# and the wheels (fastapi, uvicorn, openai, gguf) the tests need:
#   bash scripts/gpu/launch.sh --budget 240 -- bash scripts/gpu/test_gpu.sh
# Results under $OUT: test_gpu.xml (JUnit); the output is in the launcher's log.
set -uo pipefail

OUT=${OUT:-/tmp/kilotok-out}
# tests/conftest.py runs Triton through its interpreter unless told otherwise: here the kernels run on the GPU.
export TRITON_INTERPRET=0
# Only the modules that hold gpu tests are collected: others import packages the GPU image lacks.
mapfile -t modules < <(grep -rlE "pytest\.mark\.gpu" tests --include='test_*.py' | sort)
exec "${PYTHON:-python3}" -m pytest -m gpu "${modules[@]}" -p no:cacheprovider -o addopts="" -q -rs --durations=10 \
    --junitxml="$OUT/test_gpu.xml" "$@"
