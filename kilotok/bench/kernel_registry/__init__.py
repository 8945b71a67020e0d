"""The GPU kernels `kilotok bench kernels` checks and times, each at the shapes of several models and token
counts, with the fewest bytes and the operations one call must move and do. One module per kernel family
(base.py holds the shapes and the entry type).

Adding a kernel is one `BenchKernel` entry in its family's ENTRIES:

- `name`: how the report and the JSON call it;
- `inputs(model, tokens, device)`: a `KernelCall` (the tensors, drawn at random, never zeros, plus the
  constant options), or None where the kernel has no such layer in that model;
- `reference(*args, **options)`: the PyTorch reference op (also what `torch.compile` is timed on); it must be
  capturable in a CUDA graph (no host sync);
- `kernel(*args, **options)`: the Triton kernel through its entry point. Both return a tensor or a tuple
  of tensors. A kernel may write its inputs in place (and return them): the check runs the reference
  first, then the kernel, on the same inputs;
- `workload(model, tokens, dtype)`: a `Workload`, counted by hand from the shapes (each input read once,
  each output written once), which sets the GB/s and TFLOP/s printed next to the measured ceilings;
- `tolerance`: the largest |out - ref| / |ref| that passes the check (bf16 by default);
- `pdl`: the kernel also takes `pdl=True` (kernels/triton/pdl.py), and is timed that way too on Hopper and
  newer GPUs;
- `shared(model, device)`: operands drawn once per case and passed after each input set's own (weights too
  large to draw per input set).

The bench draws several input sets per case (enough to pass the L2 cache), so `inputs` must allocate fresh
tensors on every call.
"""

from __future__ import annotations

from kilotok.bench.kernel_registry import attention, elementwise, gemm, moe, sampling
from kilotok.bench.kernel_registry.base import (
    DTYPE,
    LLAMA31_8B,
    MAVERICK_MOE_LAYER,
    MIXTRAL_MOE_LAYER,
    MODELS,
    SMOLLM2_135M,
    TOKENS,
    BenchKernel,
    KernelCall,
    ModelShape,
    Workload,
)

KERNELS: tuple[BenchKernel, ...] = (*elementwise.ENTRIES, *attention.ENTRIES, *gemm.ENTRIES, *moe.ENTRIES,
                                    *sampling.ENTRIES)

GOAL_CASES: tuple[tuple[str, int, tuple[str, ...] | None], ...] = (
    (LLAMA31_8B.name, 1, None),
    (MAVERICK_MOE_LAYER.name, 1, ("fused_moe_fp8", "fused_moe_bf16")),
    (MAVERICK_MOE_LAYER.name, 8, ("fused_moe_fp8", "fused_moe_bf16")),
)
"""The cases issue 12's goals are stated at (model, tokens, kernels; None: every kernel), which a run takes
first so that a run cut short by its budget still has them."""


def goal_rank(kernel: str, model: str, tokens: int) -> int:
    """The index of the first goal a case belongs to; len(GOAL_CASES) for every other case."""
    for rank, (goal_model, goal_tokens, kernels) in enumerate(GOAL_CASES):
        if (model, tokens) == (goal_model, goal_tokens) and (kernels is None or kernel in kernels):
            return rank
    return len(GOAL_CASES)


__all__ = ["DTYPE", "GOAL_CASES", "KERNELS", "LLAMA31_8B", "MAVERICK_MOE_LAYER", "MIXTRAL_MOE_LAYER", "MODELS",
           "SMOLLM2_135M", "TOKENS", "BenchKernel", "KernelCall", "ModelShape", "Workload", "goal_rank"]
