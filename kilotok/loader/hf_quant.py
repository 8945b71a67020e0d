"""Pre-quantized Hugging Face checkpoints: pair stored FP8 weights with their scales into `Fp8Weight`s.

Formats read (`quantization_config.quant_method` in config.json):

- `fp8` (DeepSeek V3, transformers' FineGrainedFP8, vLLM): E4M3 `<module>.weight` and an fp32 multiplier
  `<module>.weight_scale_inv`; `weight_block_size: [rows, cols]` gives blocks (scale grid rounded up),
  without it the scale is one per tensor (shape () or (1,)) or one per output row ((out, 1)). vLLM's
  per-tensor name `<module>.weight_scale` is read too. Static `input_scale`s are dropped: kilotok always
  quantizes activations dynamically.
- `fbgemm_fp8` (Meta's FP8 Llama 4): `<module>.weight` with `<module>.weight_scale` (out, 1); the fused
  3-D Llama 4 experts `<experts>.gate_up_proj` (E, in, out) with `<experts>.gate_up_proj_scale` (E, 1, out)
  and `<experts>.down_proj` with `<experts>.down_proj_scale` (E, out, 1). Experts come back in linear
  orientation, (E, out, in) with scales (E, out, 1), so `Fp8Weight.expert(e)` feeds `kernels.fp8_gemm.fp8_linear`.

Layers named in `modules_to_not_convert` are simply stored unquantized, so nothing here needs the list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from kilotok.errors import ModelFormatError
from kilotok.loader.fp8_weight import FP8_DTYPE, Fp8Weight, scale_grid_shape

SCALE_SUFFIXES = {"fp8": ("_scale_inv", "_scale"), "fbgemm_fp8": ("_scale",)}
"""Scale of tensor `x.weight` (or stacked experts `x.gate_up_proj`): `x.weight_scale_inv` / `x.weight_scale`."""
DROPPED_SUFFIXES = ("input_scale", "activation_scale", "input_scale_ub")


def check_quantization_config(quantization: Any) -> None:
    """Reject a `quantization_config` kilotok cannot read, naming what it can."""
    if quantization is None:
        return
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    if method not in SCALE_SUFFIXES:
        raise ModelFormatError(
            f"config.json's quantization_config has quant_method {method!r}, which kilotok cannot read; it reads "
            f"{' and '.join(SCALE_SUFFIXES)} checkpoints (E4M3 weights with their scales). Use the unquantized "
            "model folder or a .gguf file, or quantize with `kilotok quantize`"
        )
    block = quantization.get("weight_block_size")
    if block is not None and not (isinstance(block, list) and len(block) == 2
                                  and all(isinstance(b, int) and b > 0 for b in block)):
        raise ModelFormatError(
            f"quantization_config.weight_block_size must be two positive integers [rows, cols], got {block!r}"
        )


def read_quantization_config(folder: Path) -> dict | None:
    raw = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    quantization = raw.get("quantization_config")
    check_quantization_config(quantization)
    return quantization


def scale_tensor_names(names: Iterable[str]) -> set[str]:
    """The names among `names` that hold scales of other tensors (an FP8 weight's `_scale_inv` or `_scale`,
    static activation scales): parts of a weight, not weights of the model."""
    present = set(names)
    return {name for name in present if name.endswith(DROPPED_SUFFIXES) or _scaled_tensor(name) in present}


def attach_fp8_scales(weights: dict[str, torch.Tensor], quantization: dict | None) -> dict[str, Any]:
    """Replace each stored FP8 weight and its scale by one `Fp8Weight`; other tensors pass through."""
    _reject_other_fp8(weights)
    fp8_names = [name for name, tensor in weights.items() if tensor.dtype == FP8_DTYPE]
    if not fp8_names:
        return weights
    if quantization is None:
        raise ModelFormatError(
            f"tensor {fp8_names[0]!r} is stored in FP8, but config.json has no quantization_config saying how "
            "its scales are stored; add the checkpoint's original quantization_config"
        )
    method = quantization["quant_method"]
    block = quantization.get("weight_block_size") if method == "fp8" else None
    result = {name: t for name, t in weights.items() if not name.endswith(DROPPED_SUFFIXES)}
    for name in fp8_names:
        scale_name = _scale_name(name, weights, SCALE_SUFFIXES[method])
        scale = result.pop(scale_name)
        if weights[name].dim() == 3 and method == "fbgemm_fp8":
            result[name] = _fbgemm_experts(name, weights[name], scale_name, scale)
        else:
            result[name] = _fp8_matrix(name, weights[name], scale_name, scale, block)
    for name in result:
        owner = _scaled_tensor(name)
        if owner in result and not isinstance(result[owner], Fp8Weight):
            raise ModelFormatError(f"scale tensor {name!r} belongs to {owner!r}, which is not stored in FP8")
    return result


def _reject_other_fp8(weights: dict[str, torch.Tensor]) -> None:
    for name, tensor in weights.items():
        if tensor.dtype == torch.float8_e5m2:
            raise ModelFormatError(f"tensor {name!r} is FP8 E5M2; kilotok reads FP8 weights in E4M3 only")


def _scale_name(name: str, weights: dict[str, torch.Tensor], suffixes: tuple[str, ...]) -> str:
    candidates = [name + suffix for suffix in suffixes]
    for candidate in candidates:
        if candidate in weights:
            return candidate
    raise ModelFormatError(f"FP8 tensor {name!r} has no scale tensor; expected {' or '.join(map(repr, candidates))}")


def _scaled_tensor(name: str) -> str | None:
    """The tensor a scale name belongs to (`x.weight_scale_inv` -> `x.weight`), None for other names."""
    for suffix in ("_scale_inv", "_scale"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return None


def _fp8_matrix(name: str, data: torch.Tensor, scale_name: str, scale: torch.Tensor,
                block: list[int] | None) -> Fp8Weight:
    if data.dim() != 2:
        raise ModelFormatError(
            f"FP8 tensor {name!r} has shape {tuple(data.shape)}; kilotok reads 2-D FP8 weights in this format "
            "(stacked 3-D experts only in fbgemm_fp8)"
        )
    out_features, in_features = data.shape
    if block is not None:
        expected = {scale_grid_shape(data.shape, tuple(block)): tuple(block)}
        described = f"{block[0]}x{block[1]} blocks"
    else:
        expected = {(): (out_features, in_features), (1,): (out_features, in_features),
                    (out_features, 1): (1, in_features)}
        described = "one scale per tensor or per output row"
    shape = tuple(scale.shape)
    if shape not in expected:
        raise ModelFormatError(
            f"scale tensor {scale_name!r} has shape {shape}, but a {tuple(data.shape)} FP8 weight with "
            f"{described} needs {' or '.join(str(s) for s in expected)}"
        )
    chosen = expected[shape]
    return Fp8Weight(data, scale.float().reshape(scale_grid_shape(data.shape, chosen)), chosen)


def _fbgemm_experts(name: str, data: torch.Tensor, scale_name: str, scale: torch.Tensor) -> Fp8Weight:
    experts, _, out_features = data.shape
    allowed = ((experts, 1, out_features), (experts, out_features, 1))
    if tuple(scale.shape) not in allowed:
        raise ModelFormatError(
            f"scale tensor {scale_name!r} has shape {tuple(scale.shape)}, but the stacked experts {name!r} of "
            f"shape {tuple(data.shape)} (experts, in, out) need one scale per output column: "
            f"{allowed[0]} or {allowed[1]}"
        )
    linear = data.transpose(1, 2).contiguous()
    return Fp8Weight(linear, scale.float().reshape(experts, out_features, 1), (1, linear.shape[-1]))
