#!/usr/bin/env bash
# Installs llama-cpp-python into the active venv (or .venv) as the `kilotok bench latency --compare` baseline.
# Portable build on purpose: a native build (AMX) is faster but crashes on multi-token prompts unless
# n_batch=1, an upstream bug, so it is neither a fair nor a stable baseline. Takes 200-700 s on 2 cores.
# Run again with --rebuild after moving the venv to a processor with other vector extensions.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -x .venv/bin/python ] || { echo "no active venv and no .venv: run scripts/setup.sh first" >&2; exit 1; }
    . .venv/bin/activate
fi
flags="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
if grep -qw avx512f /proc/cpuinfo; then
    flags="$flags -DGGML_AVX512=ON"
else
    echo "no avx512f in /proc/cpuinfo: building without AVX-512"
fi
reinstall=()
[ "${1:-}" = "--rebuild" ] && reinstall=(--force-reinstall --no-deps)
echo "building llama-cpp-python with CMAKE_ARGS=\"$flags\""
CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    pip install --disable-pip-version-check --no-cache-dir --no-binary llama-cpp-python \
    "${reinstall[@]}" "llama-cpp-python>=0.3"
python -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'imports')"
