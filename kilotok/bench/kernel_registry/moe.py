"""Registry entries for the fused MoE kernel on the MoE layers (None on dense models), with BF16 and with FP8
experts (E4M3, per-channel scales as Llama 4's FP8 checkpoint has them; activations quantized per token).

Routing is drawn so that each call reads a known number of experts: the T x k (token, expert) pairs go to
min(T x k, E) distinct experts (a balanced load, the most bytes a call can read), so the workload counts
exactly the active experts' weights, once. The shared expert (Llama 4) is stacked after the routed ones and
chosen by every token with weight 1, the way fused-MoE engines fold it in: one call runs the whole layer.
(kernels/moe.py does not know it is shared; the engine's layers/moe.py still runs it as its own MLP.)

The experts are drawn once per case (`shared`): a Maverick layer is 32 GB in BF16. The reference gathers
each pair's expert and multiplies, a few pairs at a time to bound its memory: a PyTorch MoE that a CUDA
graph can capture (kernels/moe.py's reference reads the group sizes on the host), checked against that
reference in the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kilotok.bench.kernel_registry.base import (
    DTYPE,
    BenchKernel,
    KernelCall,
    ModelShape,
    Workload,
    element_size,
    random,
    triton_entry,
)
from kilotok.kernels.fp8_gemm import quantize_activations
from kilotok.kernels.moe import ExpertWeight, moe_experts
from kilotok.loader.fp8_weight import FP8_DTYPE, Fp8Weight

STEP_BYTES = 2**32
"""The reference gathers as many pairs' experts at once as fit this many bytes of gate/up in fp32 (12 of
Maverick's, 9 of Mixtral's: 128 pairs in 11 or 15 steps; the gathered copies are bf16, half that): bounded
memory, a graph of few steps."""


def _stacked_experts(model: ModelShape) -> int:
    return model.experts + (1 if model.shared_expert else 0)


def _pairs_per_token(model: ModelShape) -> int:
    return model.top_k + (1 if model.shared_expert else 0)


def _routing(model: ModelShape, tokens: int, device: torch.device) -> KernelCall | None:
    if not model.experts:
        return None
    relabel = torch.randperm(model.experts, device=device)
    experts = relabel[torch.arange(tokens * model.top_k, device=device) % model.experts].view(tokens, model.top_k)
    weights = torch.rand(tokens, model.top_k, device=device) * 0.9 + 0.1
    if model.top_k > 1:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if model.shared_expert:
        experts = torch.cat([experts, torch.full((tokens, 1), model.experts, device=device)], dim=1)
        weights = torch.cat([weights, torch.ones(tokens, 1, device=device)], dim=1)
    x = random(tokens, model.hidden, device=device)
    return KernelCall((x, weights.to(DTYPE), experts), {"gate_on_input": model.gate_on_input})


def _float_experts(model: ModelShape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    count, d, f = _stacked_experts(model), model.hidden, model.expert_intermediate
    return random(count, 2 * f, d, device=device, scale=d**-0.5), random(count, d, f, device=device, scale=f**-0.5)


def _fp8_matrices(count: int, rows: int, cols: int, device: torch.device) -> Fp8Weight:
    data = torch.empty(count, rows, cols, dtype=FP8_DTYPE, device=device)
    for expert in data:  # one expert at a time: no wide copy of the whole stack
        expert.copy_(random(rows, cols, device=device))
    scale = (torch.rand(count, rows, 1, device=device) + 0.5) * cols**-0.5
    return Fp8Weight(data, scale, (1, cols))


def _fp8_experts(model: ModelShape, device: torch.device) -> tuple[Fp8Weight, Fp8Weight]:
    count, d, f = _stacked_experts(model), model.hidden, model.expert_intermediate
    return _fp8_matrices(count, 2 * f, d, device), _fp8_matrices(count, d, f, device)


def _pair_linear(rows: torch.Tensor, weight: ExpertWeight, ids: torch.Tensor) -> torch.Tensor:
    """rows[i] @ weight[ids[i]].T for each pair. FP8 experts (per-tensor or per-channel scales) as the FP8
    GEMM's reference computes them: activations quantized per token, the codes multiplied in bf16 (exact;
    fp32 for fp32 rows), both scales applied to the product."""
    if not isinstance(weight, Fp8Weight):
        return torch.bmm(rows.to(weight.dtype).unsqueeze(1), weight[ids].transpose(1, 2)).squeeze(1)
    if weight.scheme == "block":
        raise ValueError("the gathered MoE reference takes per-tensor or per-channel FP8 experts")
    out_dtype = torch.float32 if rows.dtype == torch.float32 else torch.bfloat16
    codes, x_scale = quantize_activations(rows, rows.shape[-1])
    products = torch.bmm(codes.to(out_dtype).unsqueeze(1), weight.data[ids].to(out_dtype).transpose(1, 2))
    return (products.squeeze(1).float() * x_scale * weight.scale[ids][..., 0]).to(out_dtype)


def gathered_moe(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, gate_up: ExpertWeight,
                 down: ExpertWeight, gate_on_input: bool) -> torch.Tensor:
    """kernels/moe.py's `moe_experts`, one (token, expert) pair at a time over gathered expert weights."""
    tokens, top_k = experts.shape
    ids = experts.flatten()
    pair_weights = weights.flatten()[:, None]
    rows = x.repeat_interleave(top_k, dim=0)
    if gate_on_input:
        rows = rows * pair_weights
    outputs = []
    pairs_per_step = max(1, STEP_BYTES // (4 * gate_up.shape[1] * gate_up.shape[2]))
    for start in range(0, ids.numel(), pairs_per_step):
        step = slice(start, start + pairs_per_step)
        gate, up = _pair_linear(rows[step], gate_up, ids[step]).chunk(2, dim=-1)
        outputs.append(_pair_linear(F.silu(gate) * up, down, ids[step]))
    out = torch.cat(outputs)
    if not gate_on_input:
        out = out * pair_weights
    return out.view(tokens, top_k, -1).float().sum(dim=1).to(x.dtype)


def _moe_workload(fp8: bool):
    def workload(model: ModelShape, tokens: int, dtype: torch.dtype) -> Workload:
        """The active experts' weights read once (FP8: plus their per-row fp32 scales), x read and the output
        written, the routing read; operations: three products per (token, expert) pair."""
        d, f = model.hidden, model.expert_intermediate
        active = min(tokens * model.top_k, model.experts) + (1 if model.shared_expert else 0)
        expert_bytes = 3 * f * d + (2 * f + d) * 4 if fp8 else 3 * f * d * element_size(dtype)
        pairs = tokens * _pairs_per_token(model)
        routing = pairs * (8 + element_size(dtype))
        return Workload(active * expert_bytes + 2 * tokens * d * element_size(dtype) + routing,
                        pairs * 2 * 3 * f * d)

    return workload


ENTRIES = (
    BenchKernel("fused_moe_bf16", _routing, gathered_moe, triton_entry(moe_experts), _moe_workload(fp8=False),
                tolerance=2e-2, pdl=True, shared=_float_experts),
    # The down projection quantizes silu(gate) * up, which the reference rounds to bf16 three times and the
    # kernel once (and, with the weight on the input, the reference quantizes weight * x, the kernel x): a few
    # codes land one E4M3 step (1/16) apart. Measured under the interpreter: 1-2% (a wrong gate: 69%).
    BenchKernel("fused_moe_fp8", _routing, gathered_moe, triton_entry(moe_experts), _moe_workload(fp8=True),
                tolerance=5e-2, pdl=True, shared=_fp8_experts),
)
