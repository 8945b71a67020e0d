"""What every registry entry is built from: the models' layer shapes, the bench entry and its workload, and
the helpers that draw random inputs (never zeros) and call a kernel entry point on the Triton backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kilotok.kernels.backend import KernelBackend

DTYPE = torch.bfloat16
EPS = 1e-5
MAX_POSITION = 4096
TOKENS = (1, 8, 64)


@dataclass(frozen=True)
class ModelShape:
    """One model's layer sizes, as the kernels see them. `experts` 0: a dense model. `context`: the keys each
    sequence holds in the attention entries; `attention_chunk` > 0: chunked-local attention (Llama 4)."""

    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    context: int = 4096
    attention_chunk: int = 0
    rope_interleaved: bool = False
    qk_l2_norm: bool = False
    experts: int = 0
    expert_intermediate: int = 0
    top_k: int = 0
    shared_expert: bool = False
    gate_on_input: bool = False
    """The router weight scales the expert's input (Llama 4) rather than its output (Mixtral)."""

    @property
    def mlp_intermediate(self) -> int:
        """The width the SwiGLU runs at on this model's benched layer (an expert's on a MoE layer)."""
        return self.expert_intermediate if self.experts else self.intermediate


SMOLLM2_135M = ModelShape("smollm2-135m", hidden=576, heads=9, kv_heads=3, head_dim=64, intermediate=1536,
                          vocab=49152)
LLAMA31_8B = ModelShape("llama-3.1-8b", hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336,
                        vocab=128256)
# One MoE layer of Llama 4 Maverick: top-1 of 128 experts plus a shared expert of the experts' width, on a
# chunked-local attention layer (chunks of 8192: wider than the benched context, so no key is cut).
MAVERICK_MOE_LAYER = ModelShape("llama4-maverick-moe", hidden=5120, heads=40, kv_heads=8, head_dim=128,
                                intermediate=16384, vocab=202048, attention_chunk=8192, rope_interleaved=True,
                                qk_l2_norm=True, experts=128, expert_intermediate=8192, top_k=1, shared_expert=True,
                                gate_on_input=True)
# Mixtral 8x7B's MoE layer: top-2 of 8 experts, the gate weight on the experts' outputs.
MIXTRAL_MOE_LAYER = ModelShape("mixtral-8x7b-moe", hidden=4096, heads=32, kv_heads=8, head_dim=128,
                               intermediate=14336, vocab=32000, experts=8, expert_intermediate=14336, top_k=2)
MODELS = (SMOLLM2_135M, LLAMA31_8B, MAVERICK_MOE_LAYER, MIXTRAL_MOE_LAYER)


@dataclass(frozen=True)
class Workload:
    """The fewest bytes one call moves through device memory, and its floating-point operations."""

    bytes: int
    flops: int


@dataclass(frozen=True)
class KernelCall:
    args: tuple[object, ...]
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
    shared: Callable[[ModelShape, torch.device], tuple[object, ...]] | None = None
    """Operands too large to draw once per input set (a MoE layer's experts): drawn once per case and passed
    after each input set's own arguments."""


def element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def random(*shape: int, device: torch.device, dtype: torch.dtype = DTYPE, scale: float = 1.0) -> torch.Tensor:
    """Normal values times `scale`, drawn in `dtype` itself where torch can (no fp32 copy of a large tensor)."""
    if dtype.is_floating_point and element_size(dtype) > 1:
        return torch.randn(*shape, device=device, dtype=dtype).mul_(scale)
    return (torch.randn(*shape, device=device) * scale).to(dtype)


def triton_entry(entry_point: Callable[..., object]) -> Callable[..., object]:
    """`entry_point` on the Triton backend (the kernels/ entry points take the backend as a keyword)."""

    def kernel(*args: object, **options: object) -> object:
        return entry_point(*args, **options, backend=KernelBackend.TRITON)

    return kernel
