"""Bad GGUF files give a KilotokError that says what is wrong, never gguf's or numpy's own exception."""

from __future__ import annotations

import numpy as np
import pytest

from kilotok.errors import ModelFormatError, ModelNotFoundError
from kilotok.loader.gguf_loader import load_gguf
from kilotok.models.registry import expected_tensors
from tests.loader.tiny_gguf import FFN, HIDDEN, Q, write_tiny_llama

DEFAULT_DATA_OFFSET = 1_785_664  # where the default model's tensor data starts (gguf-dump)


def load(path):
    """Load as kilotok does: checked against what the metadata implies before any tensor is decoded."""
    return load_gguf(path, expected_tensors, progress=False)


def write_prefix(source, target, size: int):
    with source.open("rb") as file:
        target.write_bytes(file.read(size))
    return target


def overwrite(path, offset: int, data: bytes):
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(data)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load(tmp_path / "absent.gguf")


def test_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="directory"):
        load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"GG", b"PK\x03\x04 a zip, not a model" * 10])
def test_not_a_gguf(tmp_path, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        load(path)


@pytest.mark.parametrize("size", [6, 30, 100_000, DEFAULT_DATA_OFFSET - 10, DEFAULT_DATA_OFFSET + 1_000_000])
def test_truncated_default_model(default_gguf_path, tmp_path, size):
    truncated = write_prefix(default_gguf_path, tmp_path / "cut.gguf", size)
    with pytest.raises(ModelFormatError, match="truncated or corrupt") as error:
        load(truncated)
    assert "download or convert the model again" in str(error.value)


@pytest.mark.parametrize("offset,data", [
    (4, (99).to_bytes(4, "little")),  # an unknown GGUF version
    (16, (2**40).to_bytes(8, "little")),  # more metadata entries than the file holds
    (24, (2**40).to_bytes(8, "little")),  # a first key longer than the file
])
def test_corrupt_header(tmp_path, offset, data):
    path = tmp_path / "corrupt.gguf"
    write_tiny_llama(path)
    with pytest.raises(ModelFormatError, match="truncated or corrupt"):
        load(overwrite(path, offset, data))


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_tiny_llama(path, arch="gpt2")
    with pytest.raises(ModelFormatError, match=r"unsupported GGUF architecture 'gpt2'; kilotok runs llama"):
        load(path)


@pytest.mark.parametrize("stored,qtype_name", [
    (np.zeros((FFN, HIDDEN), np.int32), "I32"),
    ((np.zeros((FFN, HIDDEN // 256 * 292), np.uint8), Q.Q8_K), "Q8_K"),
])
def test_type_gguf_cannot_dequantize(tmp_path, stored, qtype_name):
    path = tmp_path / "odd_type.gguf"
    write_tiny_llama(path, replace={"blk.0.ffn_up.weight": stored})
    with pytest.raises(ModelFormatError, match=f"mlp.up_proj.weight is stored as {qtype_name}"):
        load(path)


@pytest.mark.parametrize("metadata,replace,message", [
    ({"feed_forward_length": FFN // 2}, {}, r"shape \(512, 256\) but the metadata implies \(256, 256\)"),
    ({"attention.head_count_kv": 1}, {}, "k_proj.weight has shape"),
    ({"block_count": 1}, {}, "config does not account for"),
    ({}, {"blk.0.ffn_norm.weight": None}, "lacks 1 tensors .*post_attention_layernorm"),
    ({}, {"blk.0.ffn_gate_exps.weight": np.zeros((4, 8), np.float32)}, "ffn_gate_exps.weight. is not part"),
    ({"embedding_length": None}, {}, "lacks the required key 'llama.embedding_length'"),
    ({"attention.head_count": 3}, {}, "must be a multiple of num_kv_heads"),
    ({"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0}, {}, "'yarn' rope scaling"),
    ({"rope.dimension_count": 32}, {}, "rotate 32 of 64 dims"),
    ({"embedding_length": "wide"}, {}, "malformed model metadata"),
])
def test_metadata_and_tensors_disagree(tmp_path, metadata, replace, message):
    path = tmp_path / "inconsistent.gguf"
    write_tiny_llama(path, layer_types=(Q.F16, Q.Q8_0), metadata=metadata, replace=replace)
    with pytest.raises(ModelFormatError, match=message):
        load(path)
