"""`kilotok quantize` as a user runs it: a subprocess writes a folder that `kilotok generate` then runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.quant.tiny_hf import save_tiny_llama


def kilotok(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kilotok.cli", *args], capture_output=True, text=True, timeout=300)


def test_quantize_then_generate_from_the_folder(tmp_path: Path):
    source = tmp_path / "source"
    save_tiny_llama(source)
    out = tmp_path / "fp8"

    result = kilotok("quantize", "--model", str(source), "--out", str(out), "--scheme", "fp8-channel")

    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "fbgemm_fp8"
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    generated = kilotok("generate", "--model", str(out), "--prompt", "t5 t7", "--max-tokens", "3", "--ignore-eos",
                        "--json", "--no-compile", "--kv-cache-gb", "0.05")
    assert generated.returncode == 0, generated.stderr
    assert json.loads(generated.stdout)["num_output_tokens"] == 3


def test_existing_output_folder_and_unknown_scheme(tmp_path: Path):
    source = tmp_path / "source"
    save_tiny_llama(source)
    taken = kilotok("quantize", "--model", str(source), "--out", str(source))
    assert taken.returncode == 2 and "already holds a model" in taken.stderr
    unknown = kilotok("quantize", "--model", str(source), "--out", str(tmp_path / "x"), "--scheme", "fp4")
    assert unknown.returncode == 2 and "invalid choice: 'fp4'" in unknown.stderr
