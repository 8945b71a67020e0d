"""The RoPE kernel (in place on q and k, both pair layouts, Llama 3 scaled frequencies, the L2 norm fused)
against the reference; the reference against RoPE written as a complex product."""

from __future__ import annotations

import pytest
import torch

from kilotok.errors import InvalidRequestError
from kilotok.kernels.backend import KernelBackend
from kilotok.kernels.rotary import apply_rope
from kilotok.layers.rotary import RopeScaling, rope_inverse_frequencies
from tests.kernels.triton.tolerances import TOLERANCE

MAX_POSITIONS = 300
SCALING = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)
EPS = 1e-5


def _tables(head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.outer(torch.arange(MAX_POSITIONS, dtype=torch.float32),
                         rope_inverse_frequencies(head_dim, 500000.0, SCALING))
    return angles.cos(), angles.sin()


def _fused_qkv(tokens: int, q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int):
    """q, k, v as the attention layer has them: views of one fused projection output."""
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_dim, generator=generator).to(dtype)
    q, k, v = qkv.split([q_heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    positions = torch.randint(0, MAX_POSITIONS, (tokens,), generator=generator)
    return qkv, q.view(tokens, q_heads, head_dim), k.view(tokens, kv_heads, head_dim), v, positions


def _as_complex_rope(x: torch.Tensor, positions: torch.Tensor, head_dim: int, interleaved: bool) -> torch.Tensor:
    cos, sin = _tables(head_dim)
    rotation = torch.complex(cos[positions].double(), sin[positions].double()).unsqueeze(1)
    x = x.double()
    if interleaved:
        return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous()) * rotation).flatten(-2)
    half = head_dim // 2
    rotated = torch.complex(x[..., :half], x[..., half:]) * rotation
    return torch.cat((rotated.real, rotated.imag), dim=-1)


@pytest.mark.parametrize("l2_norm", [False, True])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("tokens", "q_heads", "kv_heads", "head_dim"), [(1, 9, 3, 64), (3, 4, 4, 24), (17, 5, 1, 128)])
def test_rope_kernel_matches_the_reference(tokens, q_heads, kv_heads, head_dim, dtype, interleaved, l2_norm):
    cos, sin = _tables(head_dim)
    eps = EPS if l2_norm else None
    qkv, q, k, v, positions = _fused_qkv(tokens, q_heads, kv_heads, head_dim, dtype, seed=tokens + head_dim)
    expected_q, expected_k = apply_rope(positions, q, k, cos, sin, interleaved, eps, KernelBackend.TORCH)
    v_before = v.clone()
    got_q, got_k = apply_rope(positions, q, k, cos, sin, interleaved, eps, KernelBackend.TRITON)
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(got_q, expected_q, **tolerance)
    torch.testing.assert_close(got_k, expected_k, **tolerance)
    assert got_q.data_ptr() == q.data_ptr() and got_k.data_ptr() == k.data_ptr()
    assert torch.equal(v, v_before)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_reference_is_the_complex_rotation(interleaved):
    _, q, k, _, positions = _fused_qkv(17, 4, 2, 64, torch.float32, seed=1)
    cos, sin = _tables(64)
    got_q, got_k = apply_rope(positions, q, k, cos, sin, interleaved, None, KernelBackend.TORCH)
    torch.testing.assert_close(got_q.double(), _as_complex_rope(q, positions, 64, interleaved), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k.double(), _as_complex_rope(k, positions, 64, interleaved), atol=1e-5, rtol=1e-5)


def test_rope_rejects_tables_of_another_head_dim():
    _, q, k, _, positions = _fused_qkv(2, 2, 2, 64, torch.float32, seed=2)
    cos, sin = _tables(32)
    with pytest.raises(InvalidRequestError, match="head_dim 64"):
        apply_rope(positions, q, k, cos, sin, backend=KernelBackend.TRITON)
