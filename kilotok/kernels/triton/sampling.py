"""The sampling tail in one kernel per row, with no host sync and no sort of the vocabulary: temperature,
top-k, top-p and min-p cut-offs found by bisection, then the exponential race (kilotok/layers/sampler.py)
over what is kept; greedy rows take the argmax (lowest id among equal maxima, as torch.argmax).

The filters follow the reference's value-based definitions exactly, so ties are kept or dropped together:
- top-k keeps the tokens whose scaled logit is at least the k-th largest, found as the largest threshold
  that at least k logits reach, bisecting over the logits' order-preserving integer keys (32 passes);
- top-p keeps token i iff the mass of the tokens strictly more likely than i is below top_p (the
  reference's sorted cumulative sum), bisecting over the probabilities' bit patterns (31 passes);
- min-p keeps the tokens at least min_p times the most likely one.
Each pass reads the row's logits again; a row of a large vocabulary stays in L2 between passes. The noise
comes from the caller (the reference's `exponential_noise`, drawn from each sequence's own generator), so a
seeded request draws the same token with either backend, up to rounding at a cut-off.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

VOCAB_TILE = 1024
TINY = 1.1754943508222875e-38  # float32's smallest normal: a zero noise draw must not divide by zero


@triton.jit
def _order_key(x):
    """An int32 that orders like the float32 x (for -inf < ... < +inf)."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.jit
def _scaled(logits_row, offsets, vocab, row_max, temperature):
    x = tl.load(logits_row + offsets, mask=offsets < vocab, other=float("-inf")).to(tl.float32)
    return (x - row_max) / temperature


@triton.jit
def _sample_kernel(logits, noise, out, temperatures, top_ks, top_ps, min_ps, greedy, vocab, logits_stride,
                   noise_stride, TILE: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
                   MIN_P: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    logits_row = logits + row * logits_stride
    lanes = tl.arange(0, TILE)
    # Pass 1: the maximum, and the first index that holds it (greedy's answer).
    best = float("-inf")
    best_index = 0
    for start in range(0, vocab, TILE):
        x = tl.load(logits_row + start + lanes, mask=start + lanes < vocab, other=float("-inf")).to(tl.float32)
        tile_best = tl.max(x, axis=0)
        if tile_best > best:
            best = tile_best
            best_index = start + tl.argmax(x, axis=0, tie_break_left=True)
    if tl.load(greedy + row) != 0:
        tl.store(out + row, best_index.to(tl.int64))
    else:
        temperature = tl.load(temperatures + row)
        # Top-k: the largest key that at least k scaled logits reach.
        cutoff_key = tl.full([], -2139095041, tl.int32)  # _order_key(-inf): every token is kept
        if TOP_K:
            k = tl.load(top_ks + row)
            if k > 0:
                low = cutoff_key
                high = tl.full([], 0, tl.int32)  # _order_key(0.0): the maximum scales to 0, so one reaches it
                for _ in range(32):
                    middle = low + (high - low + 1) // 2
                    count = 0
                    for start in range(0, vocab, TILE):
                        keys = _order_key(_scaled(logits_row, start + lanes, vocab, best, temperature))
                        count += tl.sum((keys >= middle).to(tl.int32), axis=0)
                    if count >= k:
                        low = middle
                    else:
                        high = middle - 1
                cutoff_key = low
        # Unnormalised probabilities u = exp(scaled) of the kept tokens; their sum normalises.
        total = 0.0
        for start in range(0, vocab, TILE):
            scaled = _scaled(logits_row, start + lanes, vocab, best, temperature)
            total += tl.sum(tl.where(_order_key(scaled) >= cutoff_key, tl.exp(scaled), 0.0), axis=0)
        # Top-p: the smallest probability bit pattern whose strictly-more-likely mass is below top_p.
        floor_bits = tl.full([], 0, tl.int32)
        if TOP_P:
            top_p = tl.load(top_ps + row)
            if top_p < 1.0:
                low = tl.full([], 0, tl.int32)
                high = tl.full([], 0x3F800000, tl.int32)  # 1.0: nothing is more likely than the maximum
                for _ in range(31):
                    middle = low + (high - low) // 2
                    threshold = middle.to(tl.float32, bitcast=True)
                    above = 0.0
                    for start in range(0, vocab, TILE):
                        scaled = _scaled(logits_row, start + lanes, vocab, best, temperature)
                        u = tl.where(_order_key(scaled) >= cutoff_key, tl.exp(scaled), 0.0)
                        above += tl.sum(tl.where(u > threshold, u, 0.0), axis=0)
                    if above < top_p * total:
                        high = middle
                    else:
                        low = middle + 1
                floor_bits = high
        floor = floor_bits.to(tl.float32, bitcast=True)
        if MIN_P:
            # Relative to the most likely token, whose u is exp(0) = 1 whatever was cut before.
            floor = tl.maximum(floor, tl.load(min_ps + row))
        # The race: argmax of u / noise over the kept tokens.
        winner = float("-inf")
        winner_index = 0
        for start in range(0, vocab, TILE):
            offsets = start + lanes
            scaled = _scaled(logits_row, offsets, vocab, best, temperature)
            u = tl.exp(scaled)
            kept = (_order_key(scaled) >= cutoff_key) & (u >= floor) & (offsets < vocab)
            draws = tl.load(noise + row * noise_stride + offsets, mask=offsets < vocab, other=1.0)
            score = tl.where(kept, u / tl.maximum(draws, TINY), float("-inf"))
            tile_best = tl.max(score, axis=0)
            if tile_best > winner:
                winner = tile_best
                winner_index = start + tl.argmax(score, axis=0, tie_break_left=True)
        tl.store(out + row, winner_index.to(tl.int64))


def sample_tokens(logits: torch.Tensor, noise: torch.Tensor, temperatures: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, min_p: torch.Tensor, greedy: torch.Tensor, use_top_k: bool, use_top_p: bool,
                  use_min_p: bool) -> torch.Tensor:
    """One token per row of `logits` [B, V] (int64 [B]), drawn with Exp(1) `noise` [B, V]; per-row
    parameters as in SamplingTensors (greedy rows carry temperature 1; top_k 0, top_p 1, min_p 0 are
    off). The `use_*` flags compile the filters no row uses out of the kernel."""
    rows, vocab = logits.shape
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    noise = noise if noise.stride(1) == 1 else noise.contiguous()
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    _sample_kernel[(rows,)](
        logits, noise, out, temperatures, top_k, top_p, min_p, greedy, vocab, logits.stride(0), noise.stride(0),
        TILE=min(VOCAB_TILE, triton.next_power_of_2(vocab)), TOP_K=use_top_k, TOP_P=use_top_p, MIN_P=use_min_p,
    )
    return out
