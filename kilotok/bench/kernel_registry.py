"""The GPU kernels `kilotok bench kernels` checks and times, each at the shapes of three models and several
token counts, with the fewest bytes and the operations one call must move and do.

Adding a kernel is one `BenchKernel` entry in `KERNELS`:

- `name`: how the report and the JSON call it;
- `inputs(model, tokens, device)`: a `KernelCall` (the tensors, drawn at random, never zeros, plus the
  constant options), or None where the kernel has no such layer in that model;
- `reference(*args, **options)`: the PyTorch reference op (also what `torch.compile` is timed on);
- `kernel(*args, **options)`: the Triton kernel through its entry point. Both return a tensor or a tuple
  of tensors. A kernel may write its inputs in place (and return them): the check runs the reference
  first, then the kernel, on the same inputs;
- `workload(model, tokens, dtype)`: a `Workload`, counted by hand from the shapes (each input read once,
  each output written once), which sets the GB/s and TFLOP/s printed next to the measured ceilings;
- `tolerance`: the largest |out - ref| / |ref| that passes the check (bf16 by default);
- `pdl`: the kernel also takes `pdl=True` (kernels/triton/pdl.py), and is timed that way too on Hopper and
  newer GPUs.

The bench draws several input sets per case (enough to pass the L2 cache), so `inputs` must allocate fresh
tensors on every call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kilotok.kernels.activation import swiglu, swiglu_reference
from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.norm import add_rms_norm, add_rms_norm_reference, rms_norm, rms_norm_reference
from kilotok.kernels.rotary import apply_rope, rope_reference

DTYPE = torch.bfloat16
EPS = 1e-5
MAX_POSITION = 4096
TOKENS = (1, 8, 64)


@dataclass(frozen=True)
class ModelShape:
    """One model's layer sizes, as the kernels see them. `experts` 0: a dense model."""

    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    rope_interleaved: bool = False
    qk_l2_norm: bool = False
    experts: int = 0
    expert_intermediate: int = 0
    top_k: int = 0
    shared_expert: bool = False

    @property
    def mlp_intermediate(self) -> int:
        """The width the SwiGLU runs at on this model's benched layer (an expert's on a MoE layer)."""
        return self.expert_intermediate if self.experts else self.intermediate


SMOLLM2_135M = ModelShape("smollm2-135m", hidden=576, heads=9, kv_heads=3, head_dim=64, intermediate=1536)
LLAMA31_8B = ModelShape("llama-3.1-8b", hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336)
# One MoE layer of Llama 4 Maverick: top-1 of 128 experts plus a shared expert of the experts' width.
MAVERICK_MOE_LAYER = ModelShape("llama4-maverick-moe", hidden=5120, heads=40, kv_heads=8, head_dim=128,
                                intermediate=16384, rope_interleaved=True, qk_l2_norm=True, experts=128,
                                expert_intermediate=8192, top_k=1, shared_expert=True)
MODELS = (SMOLLM2_135M, LLAMA31_8B, MAVERICK_MOE_LAYER)


@dataclass(frozen=True)
class Workload:
    """The fewest bytes one call moves through device memory, and its floating-point operations."""

    bytes: int
    flops: int


@dataclass(frozen=True)
class KernelCall:
    args: tuple[torch.Tensor, ...]
    options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchKernel:
    name: str
    inputs: Callable[[ModelShape, int, torch.device], KernelCall | None]
    reference: Callable[..., object]
    kernel: Callable[..., object]
    workload: Callable[[ModelShape, int, torch.dtype], Workload]
    tolerance: float = 1e-2
    pdl: bool = False


def _random(*shape: int, device: torch.device, dtype: torch.dtype = DTYPE, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, device=device) * scale).to(dtype)


def _norm_weight(model: ModelShape, device: torch.device) -> torch.Tensor:
    return torch.rand(model.hidden, device=device) + 0.5


def _rms_norm_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
    return KernelCall((_random(tokens, model.hidden, device=device), _norm_weight(model, device)), {"eps": EPS})


def _add_rms_norm_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
    x, residual = (_random(tokens, model.hidden, device=device) for _ in range(2))
    return KernelCall((x, residual, _norm_weight(model, device)), {"eps": EPS})


def _swiglu_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
    return KernelCall((_random(tokens, 2 * model.mlp_intermediate, device=device, scale=3.0),))


def _rope_inputs(model: ModelShape, tokens: int, device: torch.device) -> KernelCall:
    """q and k as views of one fused qkv projection's output, as the attention layer holds them."""
    q_size, kv_size = model.heads * model.head_dim, model.kv_heads * model.head_dim
    qkv = _random(tokens, q_size + 2 * kv_size, device=device)
    q, k, _ = qkv.split([q_size, kv_size, kv_size], dim=-1)
    angles = torch.rand(MAX_POSITION, model.head_dim // 2, device=device) * 6.3
    positions = torch.randint(0, MAX_POSITION, (tokens,), device=device)
    return KernelCall(
        (positions, q.view(tokens, model.heads, model.head_dim), k.view(tokens, model.kv_heads, model.head_dim),
         angles.cos(), angles.sin()),
        {"interleaved": model.rope_interleaved, "l2_norm_eps": EPS if model.qk_l2_norm else None},
    )


def _rows_workload(tensors_read: int, tensors_written: int, flops_per_element: int, weight: bool):
    def workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
        element = torch.empty(0, dtype=dtype).element_size()
        row_bytes = tokens * model.hidden * element
        weight_bytes = model.hidden * 4 if weight else 0
        return Workload(bytes=(tensors_read + tensors_written) * row_bytes + weight_bytes,
                        flops=flops_per_element * tokens * model.hidden)

    return workload


def _swiglu_workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
    element = torch.empty(0, dtype=dtype).element_size()
    width = model.mlp_intermediate
    # silu (exp, add, divide) and the product: about 4 operations per output element.
    return Workload(bytes=3 * tokens * width * element, flops=4 * tokens * width)


def _rope_workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
    element = torch.empty(0, dtype=dtype).element_size()
    rotated = tokens * (model.heads + model.kv_heads) * model.head_dim
    tables = 2 * tokens * (model.head_dim // 2) * 4 + tokens * 8  # cos and sin rows (fp32), positions (int64)
    flops = 3 * rotated + (3 * rotated if model.qk_l2_norm else 0)
    return Workload(bytes=2 * rotated * element + tables, flops=flops)


def _triton(entry_point: Callable[..., object]) -> Callable[..., object]:
    def kernel(*args: torch.Tensor, **options: object) -> object:
        return entry_point(*args, **options, backend=KernelBackend.TRITON)

    return kernel


KERNELS: tuple[BenchKernel, ...] = (
    BenchKernel("rms_norm", _rms_norm_inputs, rms_norm_reference, _triton(rms_norm),
                _rows_workload(tensors_read=1, tensors_written=1, flops_per_element=4, weight=True), pdl=True),
    BenchKernel("add_rms_norm", _add_rms_norm_inputs, add_rms_norm_reference, _triton(add_rms_norm),
                _rows_workload(tensors_read=2, tensors_written=2, flops_per_element=5, weight=True), pdl=True),
    BenchKernel("swiglu", _swiglu_inputs, swiglu_reference, _triton(swiglu), _swiglu_workload, pdl=True),
    BenchKernel("rope", _rope_inputs, rope_reference, _triton(apply_rope), _rope_workload, pdl=True),
)
