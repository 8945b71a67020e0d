"""The norm, activation and RoPE kernels registered as torch ops, so that `torch.compile` treats each launch
as one opaque call with a known output shape (or, for RoPE, known in-place writes to q and k) rather than
tracing into the launcher."""

from __future__ import annotations

import torch

from kilotok.kernels.triton import activation, norm, rotary

rms_norm = torch.library.custom_op("kilotok::triton_rms_norm", mutates_args=())(norm.rms_norm)
rms_norm.register_fake(lambda x, *_: torch.empty_like(x, memory_format=torch.contiguous_format))

add_rms_norm = torch.library.custom_op("kilotok::triton_add_rms_norm", mutates_args=())(norm.add_rms_norm)
add_rms_norm.register_fake(lambda x, residual, *_: (torch.empty_like(x, memory_format=torch.contiguous_format),
                                                    torch.empty_like(residual, memory_format=torch.contiguous_format)))

swiglu = torch.library.custom_op("kilotok::triton_swiglu", mutates_args=())(activation.swiglu)
swiglu.register_fake(lambda gate_up, _: gate_up.new_empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2)))

apply_rope_ = torch.library.custom_op("kilotok::triton_rope_", mutates_args=("q", "k"))(rotary.apply_rope_)
apply_rope_.register_fake(lambda *_: None)
