"""`--check-tensors`: a NaN or infinite block scale or float value is found and named (tensor, file, where),
what cannot be non-finite (quantized codes) passes, and damaged files still load when nothing checks them.
FP8 weights: tests/loader/test_hf_quant.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

from kilotok.errors import ModelFormatError
from kilotok.loader.checkpoint import Checkpoint
from kilotok.loader.registry import read_checkpoint
from kilotok.loader.tensor import QuantizedTensor
from kilotok.loader.tensor_check import HALF_SCALE_OFFSETS, check_tensors, nonfinite
from kilotok.models.registry import expected_tensors
from tests.loader.gguf_damage import INF_HALF, NAN_HALF, damage_tensor
from tests.loader.tiny_gguf import HIDDEN, Q, write_tiny_llama

BLOCK_TYPES = tuple(HALF_SCALE_OFFSETS)
TOKENIZER = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"],
             "tokenizer.ggml.merges": ["a b"]}
ROW = 5


def load(path: Path) -> Checkpoint:
    return read_checkpoint(str(path), expected_tensors, progress=False)


def damage_message(path: Path, name: str, fault: str) -> str:
    return (f"{path}: 1 tensor holds NaN or infinity ({name}: {fault}); the file is damaged: download or "
            "convert the model again")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    """One layer per block type with a table of scale offsets; K-quant codes are random bytes."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_llama(path, BLOCK_TYPES, metadata=TOKENIZER)
    return path


def test_a_clean_file_passes(tiny_file):
    check_tensors(load(tiny_file))


@pytest.mark.parametrize("value", [NAN_HALF, INF_HALF], ids=["nan", "inf"])
@pytest.mark.parametrize(("layer", "offset"), [(layer, offset) for layer, qtype in enumerate(BLOCK_TYPES)
                                               for offset in HALF_SCALE_OFFSETS[qtype]])
def test_a_non_finite_block_scale_is_named(tiny_file, tmp_path, layer, offset, value):
    qtype = BLOCK_TYPES[layer]
    block_size, block_bytes = GGML_QUANT_SIZES[qtype]
    blocks_per_row = HIDDEN // block_size
    path = Path(shutil.copy(tiny_file, tmp_path / "damaged.gguf"))
    last_block = ROW * blocks_per_row + blocks_per_row - 1
    damage_tensor(path, f"blk.{layer}.ffn_up.weight", last_block * block_bytes + offset, value)
    checkpoint = load(path)  # nothing checks values by default
    name = f"model.layers.{layer}.mlp.up_proj.weight"
    # gguf's own decoder agrees that the offset holds a scale: the block no longer decodes to finite values.
    with np.errstate(invalid="ignore"):
        assert not torch.isfinite(checkpoint.weights[name].dequantize()[ROW]).all()
    with pytest.raises(ModelFormatError) as error:
        check_tensors(checkpoint)
    fault = f"NaN or infinite {qtype.name} block scales: 1, the first at (row, block) ({ROW}, {blocks_per_row - 1})"
    assert str(error.value) == damage_message(path, name, fault)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda qtype: qtype.name)
def test_any_code_bytes_decode_to_finite_values(qtype):
    """Only the scales can be NaN or infinite: every other byte of a block is a code or a small integer."""
    block_size, block_bytes = GGML_QUANT_SIZES[qtype]
    blocks = np.random.default_rng(0).integers(0, 256, (64, block_bytes), dtype=np.uint8)
    for offset in HALF_SCALE_OFFSETS[qtype]:
        blocks[:, offset:offset + 2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    assert np.isfinite(dequantize(blocks, qtype)).all()
    assert nonfinite(QuantizedTensor(qtype, blocks.reshape(8, -1), (8, 8 * block_size))) is None


def test_other_block_types_are_decoded_and_checked_whole():
    blocks = quantize(np.ones((2, 256), np.float32), Q.TQ2_0)
    blocks[1, 64:66] = np.frombuffer(NAN_HALF, np.uint8)  # TQ2_0 keeps its scale after the codes
    assert nonfinite(QuantizedTensor(Q.TQ2_0, blocks, (2, 256))) == (
        "NaN or infinite TQ2_0 values: 256, the first at (1, 0)")


@pytest.mark.parametrize("layer_type", [Q.F32, Q.F16])
def test_a_non_finite_float_value_is_named(tmp_path, layer_type):
    path = tmp_path / "damaged.gguf"
    written = write_tiny_llama(path, (layer_type,), metadata=TOKENIZER)
    down = written["model.layers.0.mlp.down_proj.weight"].stored.copy()
    down[3, 7] = np.inf
    norm = written["model.norm.weight"].stored.copy()
    norm[9] = np.nan
    write_tiny_llama(path, (layer_type,), metadata=TOKENIZER,
                     replace={"blk.0.ffn_down.weight": down, "output_norm.weight": norm})
    with pytest.raises(ModelFormatError) as error:
        check_tensors(load(path))
    assert str(error.value).startswith(
        f"{path}: 2 tensors hold NaN or infinity (model.norm.weight: NaN or infinite values: 1, the first at (9,); "
        "model.layers.0.mlp.down_proj.weight: NaN or infinite values: 1, the first at (3, 7))")


def test_many_damaged_tensors_are_counted_and_the_first_named():
    weights = {f"w{i}": torch.full((2,), float("nan")) for i in range(7)} | {"ids": torch.arange(3)}
    checkpoint = Checkpoint({}, weights, tokenizer=None, path=None, name="in memory")
    with pytest.raises(ModelFormatError, match=r"in memory: 7 tensors hold NaN or infinity \(w0: .*; w4: .*; \.\.\.\)"):
        check_tensors(checkpoint)
