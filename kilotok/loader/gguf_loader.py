"""Load a llama.cpp GGUF file into a Checkpoint: config, weights under Hugging Face names, tokenizer.

Quantized matrices stay as raw GGML blocks (memory-mapped, read-only views of the file) so that quantized
layers can use them directly; everything else becomes float32.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, ReaderTensor
from gguf.quants import dequantize
from tqdm import tqdm

from kilotok.errors import ModelFormatError, ModelNotFoundError
from kilotok.loader.checkpoint import Checkpoint, ExpectedTensors, ExpectTensors
from kilotok.loader.gguf_config import ROPE_FREQS_TENSOR, hf_config_from_gguf
from kilotok.loader.gguf_names import hf_name, rope_heads, unpermute_rows
from kilotok.loader.tensor import QuantizedTensor, Weight

GGUF_MAGIC = b"GGUF"
FLOAT_TYPES = frozenset({GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16})
# gguf's reader reports damage as whatever numpy or its parser happens to raise
READER_ERRORS = (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError)


def load_gguf(path: Path, expect: ExpectTensors | None = None, progress: bool = True) -> Checkpoint:
    """Read a GGUF model; raises ModelNotFoundError or ModelFormatError with what to do on bad files."""
    path = Path(path)
    reader = open_gguf(path)
    config = read_gguf_config(reader, path)
    weights = weights_from_gguf(reader, config, expect, progress)
    # imported here: the tokenizer module is heavier than the rest of the loader and not needed for weights
    from kilotok.tokenizer.gguf_vocab import tokenizer_from_gguf

    return Checkpoint(config=config, weights=weights, tokenizer=tokenizer_from_gguf(reader), path=path,
                      name=path.name)


def open_gguf(path: Path) -> GGUFReader:
    """A memory-mapped reader, after checking that the file exists, is a GGUF and parses."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ModelNotFoundError(f"GGUF model {path} {what}; pass the path of a .gguf file")
    with path.open("rb") as file:
        magic = file.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ModelFormatError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); "
                               "pass a llama.cpp .gguf model")
    try:
        reader = GGUFReader(path)
    except READER_ERRORS as error:
        raise ModelFormatError(
            f"{path} is truncated or corrupt ({path.stat().st_size} bytes; the GGUF parser stopped with: "
            f"{error}). An interrupted download is the usual cause: download or convert the model again"
        ) from error
    if reader.byte_order != "I":
        raise ModelFormatError(f"{path} is a big-endian GGUF; kilotok reads little-endian files only")
    return reader


def read_gguf_config(reader: GGUFReader, path: Path) -> dict[str, Any]:
    """The file's metadata as the config.json of the model it holds."""
    try:
        return hf_config_from_gguf(reader)
    except (ValueError, TypeError) as error:
        message = f"{path} has malformed model metadata ({error}); convert the model again"
        raise ModelFormatError(message) from error


def weights_from_gguf(reader: GGUFReader, config: dict[str, Any], expect: ExpectTensors | None = None,
                      progress: bool = False) -> dict[str, Weight]:
    """Every tensor under its Hugging Face name, checked against what `expect` says the config implies
    before any is decoded."""
    tensors = {hf_name(t.name): t for t in reader.tensors if t.name != ROPE_FREQS_TENSOR}
    if expect is not None:
        _check_shapes({name: torch_shape(t) for name, t in tensors.items()}, expect(config, list(tensors)))
    for name, tensor in tensors.items():
        _check_decodable(name, tensor.tensor_type)
    weights: dict[str, Weight] = {}
    bar = tqdm(tensors.items(), desc="Loading GGUF tensors", unit="tensor", disable=not progress)
    for name, tensor in bar:
        weights[name] = _hf_row_order(_to_weight(tensor), rope_heads(name, config))
    return weights


def torch_shape(tensor: ReaderTensor) -> tuple[int, ...]:
    """GGUF lists dimensions innermost first (ggml's ne); torch lists them outermost first."""
    return tuple(int(dim) for dim in reversed(tensor.shape.tolist()))


def _check_shapes(found: dict[str, tuple[int, ...]], expected_tensors: ExpectedTensors) -> None:
    expected = expected_tensors.shapes
    missing = [name for name in expected if name not in found and name not in expected_tensors.optional]
    if missing:
        raise ModelFormatError(f"GGUF lacks {len(missing)} tensors the config needs, e.g. {missing[:3]}; "
                               "the file is incomplete, convert the model again")
    extra = [name for name in found if name not in expected]
    if extra:
        raise ModelFormatError(f"GGUF holds tensors its config does not account for, e.g. {extra[:3]} "
                               "(more layers than block_count?); convert the model again")
    for name, shape in found.items():
        if shape != expected[name]:
            raise ModelFormatError(f"GGUF tensor {name} has shape {shape} but the metadata implies "
                                   f"{expected[name]}; the file's metadata and weights disagree")


def _check_decodable(name: str, qtype: GGMLQuantizationType) -> None:
    if not _gguf_can_dequantize(qtype):
        raise ModelFormatError(f"GGUF tensor {name} is stored as {qtype.name}, which the installed gguf "
                               "package cannot dequantize; upgrade gguf or use a Q4_K, Q8_0 or similar file")


@cache
def _gguf_can_dequantize(qtype: GGMLQuantizationType) -> bool:
    """Asks gguf itself, on one zero block, so kilotok accepts exactly the types gguf supports."""
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    try:
        dequantize(np.zeros((1, block_bytes), dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def _to_weight(tensor: ReaderTensor) -> Weight:
    shape = torch_shape(tensor)
    if tensor.tensor_type in FLOAT_TYPES or len(shape) != 2:
        values = dequantize(tensor.data, tensor.tensor_type)
        return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))
    return QuantizedTensor(tensor.tensor_type, np.asarray(tensor.data), (shape[0], shape[1]))


def _hf_row_order(weight: Weight, num_heads: int | None) -> Weight:
    if num_heads is None:
        return weight
    order = unpermute_rows(weight.shape[0], num_heads)
    if isinstance(weight, QuantizedTensor):
        return weight.take_rows(order)
    return weight[torch.from_numpy(order)]
