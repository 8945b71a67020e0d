"""The `kilotok` command as a user runs it: a real subprocess, stdout and exit codes checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kilotok.speculative.eagle3.checkpoint import DRAFTS_DIR
from tests.loader.gguf_damage import damaged_default_model
from tests.quant.tiny_hf import save_tiny_llama

REQUIRED_KEYS = {"text", "token_ids", "num_prompt_tokens", "num_output_tokens", "ttft_s", "decode_tokens_per_s",
                 "finish_reason"}
FAST = ["--dtype", "fp32", "--no-compile", "--kv-cache-gb", "0.1"]


def kilotok(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kilotok.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)


@pytest.mark.parametrize("command", [[], ["generate"], ["chat"], ["bench"], ["bench", "latency"]])
def test_every_command_has_help(command):
    result = kilotok(*command, "--help")
    assert result.returncode == 0
    assert "usage: kilotok" in result.stdout


def test_generate_json_prints_one_object_per_prompt_and_nothing_else(tmp_path: Path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "The sky is"}) + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Say hi."}]}) + "\n"
    )
    result = kilotok("generate", "--prompts-file", str(prompts), "--max-tokens", "6", "--json", *FAST)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    for record in records:
        assert record.keys() >= REQUIRED_KEYS
        assert record["num_output_tokens"] == len(record["token_ids"]) <= 6
        assert record["finish_reason"] in {"stop", "length"}


def test_chat_flag_applies_the_template():
    plain = kilotok("generate", "--prompt", "Say hi.", "--max-tokens", "4", "--json", *FAST)
    chat = kilotok("generate", "--prompt", "Say hi.", "--chat", "--max-tokens", "4", "--json", *FAST)
    plain_record, chat_record = json.loads(plain.stdout), json.loads(chat.stdout)
    # The template adds a system message and role markers around the same user text.
    assert chat_record["num_prompt_tokens"] > plain_record["num_prompt_tokens"] + 10


def test_chat_streams_answers_and_exits_on_eof():
    result = kilotok("chat", "--max-tokens", "8", "--temperature", "0", *FAST, stdin="Hello!\n/reset\nBye\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("> ") >= 3
    assert len(result.stdout.replace("> ", "").strip()) > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--model", "no-such-model", "--prompt", "x"], "smollm2-135m"),
        (["generate", "--prompt", "x", "--temperature", "-1"], "temperature"),
        (["generate", "--prompt", "x", "--top-p", "0"], "top_p"),
        (["generate", "--prompts-file", "/nonexistent.jsonl"], "does not exist"),
    ],
)
def test_bad_input_exits_with_a_clear_message(args, message):
    result = kilotok(*args, *FAST)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def test_malformed_prompts_file_names_the_line(tmp_path: Path):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{not json}\n')
    result = kilotok("generate", "--prompts-file", str(prompts), *FAST)
    assert result.returncode == 2
    assert "bad.jsonl:2" in result.stderr


def _damaged_gguf(tmp_path: Path, default_gguf_path: Path) -> list[str]:
    return ["--model", str(damaged_default_model(default_gguf_path, tmp_path)), "--check-tensors"]


def _corrupt_head(tmp_path: Path, default_gguf_path: Path) -> list[str]:
    """The known case: a corrupt head file ended in safetensors' `SafetensorError: invalid header length`."""
    head = Path(shutil.copytree(DRAFTS_DIR / "smollm2-135m-eagle3", tmp_path / "head"))
    weights = head / "model.safetensors"
    weights.write_bytes((2**40).to_bytes(8, "little") + weights.read_bytes()[8:])
    return ["--spec", "eagle3", "--draft", str(head)]


def _failing_template(tmp_path: Path, default_gguf_path: Path) -> list[str]:
    save_tiny_llama(tmp_path)
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "chat_template": "{{ 1 / 0 }}"}))
    return ["--model", str(tmp_path), "--chat"]


@pytest.mark.parametrize(("damage", "file", "fault"), [
    (_damaged_gguf, "damaged.gguf", "1 tensor holds NaN or infinity (model.layers.3.mlp.down_proj.weight: NaN or "
                                    "infinite Q4_1 block scales: 1, the first at (row, block) (0, 10))"),
    (_corrupt_head, "head/model.safetensors", "is not a readable safetensors file"),
    (_failing_template, "tokenizer_config.json (chat_template)", "ZeroDivisionError: division by zero"),
])
def test_a_bad_file_is_one_line_naming_it(tmp_path, default_gguf_path, damage, file, fault):
    args = damage(tmp_path, default_gguf_path)
    result = kilotok("generate", "--prompt", "t3", "--max-tokens", "2", *FAST, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stdout == ""
    error = result.stderr.splitlines()[-1]
    assert error.startswith("kilotok: error: ") and f"{tmp_path}/{file}" in error and fault in error

