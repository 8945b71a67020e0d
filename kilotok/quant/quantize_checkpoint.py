"""`kilotok quantize`: write a checkpoint's linear layers in FP8 (or int8) as a Hugging Face folder.

The projections inside the decoder layers are quantized; embeddings, norms, MoE routers, stacked 3-D expert
tensors and the LM head stay as they are (the head too can be quantized on request). Formats, chosen so that
transformers and vLLM read them as well as kilotok:

- fp8-block: `quant_method: fp8`, `weight_block_size: [128, 128]`, fp32 `<name>_scale_inv` per block
  (DeepSeek V3 / transformers FineGrainedFP8 / vLLM). Edge blocks of a dimension that is not a multiple of
  128 are partial (the scale grid rounds up); transformers' CPU fallback cannot dequantize those, GPU
  readers can.
- fp8-tensor: `quant_method: fp8` with `weight_block_size: null` and a scalar fp32 `<name>_scale_inv`, as
  transformers' FineGrainedFP8 reads per-tensor weights (vLLM's fp8 reader calls the same scalar
  `weight_scale`; kilotok reads both names).
- fp8-channel: `quant_method: fbgemm_fp8` with fp32 `<name>_scale` of shape (out, 1): the per-channel FP8
  format of Meta's Llama 4 checkpoints, read by transformers and vLLM (`quant_method: fp8` has no
  per-channel form).
- int8: compressed-tensors `pack-quantized` W8A16 (symmetric, per channel), which vLLM runs: codes + 128
  packed four to a little-endian int32 in `<module>.weight_packed` (out, in / 4), bf16 `<module>.weight_scale`
  (out, 1) and `<module>.weight_shape`; the same codes and scales as kilotok's int8 layers. kilotok itself
  does not read this format back yet.
All unquantized tensors keep their stored dtype (GGUF blocks are written dequantized, in fp32).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from kilotok.errors import InvalidRequestError
from kilotok.loader.checkpoint import Checkpoint
from kilotok.loader.fp8_weight import DEFAULT_BLOCK, Fp8Weight
from kilotok.loader.tensor import QuantizedTensor, Weight
from kilotok.quant.fp8 import quantize_fp8
from kilotok.quant.hf_export import source_config, write_hf_folder
from kilotok.quant.int8 import quantize_int8_per_channel

WRITE_SCHEMES = ("fp8-tensor", "fp8-channel", "fp8-block", "int8")
LM_HEAD = "lm_head.weight"
EMBEDDINGS = "model.embed_tokens.weight"
# Routers pick experts from small logit differences: FP8 would flip choices, and they are tiny.
ROUTER = re.compile(r"(\.router\.|\.gate\.weight$)")


def quantize_checkpoint(checkpoint: Checkpoint, out: Path, scheme: str, quantize_lm_head: bool = False) -> Path:
    """Write `checkpoint` to the folder `out` with its decoder projections quantized in `scheme`."""
    if scheme not in WRITE_SCHEMES:
        raise InvalidRequestError(f"unknown quantization scheme {scheme!r}; choose one of {', '.join(WRITE_SCHEMES)}")
    config = source_config(checkpoint)
    weights = dict(checkpoint.weights)
    if quantize_lm_head and LM_HEAD not in weights:
        weights[LM_HEAD] = weights[EMBEDDINGS]
        config["tie_word_embeddings"] = False
    tensors: dict[str, torch.Tensor] = {}
    skipped = [] if quantize_lm_head else [LM_HEAD.removesuffix(".weight")]
    for name, weight in weights.items():
        if _quantizes(name, weight, quantize_lm_head):
            tensors.update(_quantized_tensors(name, _as_float(weight), scheme))
        else:
            tensors[name] = _as_stored(weight)
            if name.endswith(".weight") and len(weight.shape) == 2 and name not in (EMBEDDINGS, LM_HEAD):
                skipped.append(name.removesuffix(".weight"))
    config["quantization_config"] = quantization_config(scheme, skipped)
    return write_hf_folder(out, config, tensors, checkpoint)


def quantization_config(scheme: str, not_converted: list[str]) -> dict[str, Any]:
    if scheme == "fp8-channel":
        return {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0, "modules_to_not_convert": not_converted}
    if scheme == "int8":
        weights = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False,
                   "group_size": None}
        group = {"targets": ["Linear"], "weights": weights, "input_activations": None, "output_activations": None}
        return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
                "config_groups": {"group_0": group}, "ignore": not_converted}
    block = list(DEFAULT_BLOCK) if scheme == "fp8-block" else None
    return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": block,
            "modules_to_not_convert": not_converted}


def _quantizes(name: str, weight: Weight, quantize_lm_head: bool) -> bool:
    if name == LM_HEAD:
        return quantize_lm_head
    return (name.startswith("model.layers.") and name.endswith(".weight") and len(weight.shape) == 2
            and not ROUTER.search(name))


def _quantized_tensors(name: str, weight: torch.Tensor, scheme: str) -> dict[str, torch.Tensor]:
    if scheme == "int8":
        codes, scales = quantize_int8_per_channel(weight)
        module = name.removesuffix(".weight")
        return {module + ".weight_packed": pack_int8(codes, name), module + ".weight_scale": scales[:, None],
                module + ".weight_shape": torch.tensor(codes.shape)}
    fp8 = quantize_fp8(weight, scheme.removeprefix("fp8-"), name=name)
    if scheme == "fp8-channel":
        return {name: fp8.data, name + "_scale": fp8.scale}
    scale = fp8.scale.reshape(()) if scheme == "fp8-tensor" else fp8.scale
    return {name: fp8.data, name + "_scale_inv": scale}


def pack_int8(codes: torch.Tensor, name: str) -> torch.Tensor:
    """Four int8 codes per int32, offset to 0..255, the first code in the lowest byte."""
    if codes.shape[-1] % 4:
        raise InvalidRequestError(
            f"cannot pack {name} of shape {tuple(codes.shape)} into int32: in_features must be a multiple of 4"
        )
    unsigned = (codes.to(torch.int32) + 128).to(torch.uint8).numpy()
    return torch.from_numpy(unsigned.view("<i4").copy())


def _as_float(weight: Weight) -> torch.Tensor:
    return weight.dequantize() if isinstance(weight, (QuantizedTensor, Fp8Weight)) else weight.float()


def _as_stored(weight: Weight) -> torch.Tensor:
    return weight.dequantize() if isinstance(weight, (QuantizedTensor, Fp8Weight)) else weight
