"""The latency bench's baseline engines, without loading them: per-token times turned into a measurement,
and model names resolved to the files transformers and llama.cpp load."""

from __future__ import annotations

import pytest

from kilotok.bench.baselines import measurement_from_token_times, resolve_model_files
from kilotok.errors import ModelNotFoundError


def test_measurement_from_token_times_excludes_first_token_from_decode_rate():
    measured = measurement_from_token_times([7] * 30, 10.0, [10.5, 10.6, 10.7, 10.9], [1, 2, 3, 4])
    assert measured.ttft_s == pytest.approx(0.5)
    assert measured.decode_tokens_per_s == pytest.approx(3 / 0.4)
    assert measured.prefill_tokens_per_s == pytest.approx(30 / 0.5)
    assert measured.num_prompt_tokens == 30 and measured.token_ids == [1, 2, 3, 4]


def test_measurement_needs_two_tokens():
    with pytest.raises(ValueError):
        measurement_from_token_times([1], 0.0, [0.1], [5])


def test_model_files_resolve_alias_gguf_and_folder(default_gguf_path, tmp_path):
    alias = resolve_model_files("smollm2-135m")
    assert alias.gguf_path == default_gguf_path
    assert resolve_model_files(str(default_gguf_path)) == alias
    assert resolve_model_files(str(tmp_path)).gguf_path is None
    with pytest.raises(ModelNotFoundError):
        resolve_model_files(str(tmp_path / "missing.gguf"))
