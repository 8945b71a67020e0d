"""The blocked CPU argmax against torch.argmax, where ties, NaNs and block edges would tell them apart."""

from __future__ import annotations

import pytest
import torch

from kilotok.kernels.argmax import BLOCK, argmax_rows


@pytest.mark.parametrize("shape", [(1, 49152), (3, 5, 8 * BLOCK), (7, 2 * BLOCK), (4, 1000), (2, BLOCK)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_torch_argmax_with_ties_everywhere(shape, dtype):
    """Values from a handful of integers: every row has its maximum many times, in several blocks."""
    values = torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    assert torch.equal(argmax_rows(values), values.argmax(dim=-1))
    spread = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    assert torch.equal(argmax_rows(spread), spread.argmax(dim=-1))


def test_a_maximum_at_a_block_edge_and_the_first_nan_win_as_in_torch():
    values = torch.randn(5, 4 * BLOCK, generator=torch.Generator().manual_seed(3))
    values[0, BLOCK - 1] = values[0, BLOCK] = 50.0  # a tie across two blocks: the first one
    values[1, 4 * BLOCK - 1] = 50.0  # the very last value
    values[2, 3 * BLOCK + 2] = values[2, 2 * BLOCK + 5] = float("nan")  # the first NaN, over any number
    values[2, 7] = 1e30
    values[3, 9] = float("inf")
    values[4] = float("-inf")
    expected = values.argmax(dim=-1)
    assert expected.tolist() == [BLOCK - 1, 4 * BLOCK - 1, 2 * BLOCK + 5, 9, 0]
    assert torch.equal(argmax_rows(values), expected)
    # Rows as a non-contiguous view, as verification's logits can be.
    assert torch.equal(argmax_rows(values.t().contiguous().t()), expected)
