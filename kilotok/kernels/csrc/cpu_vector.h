// Helpers shared by the CPU attention ops (decode_attention.cpp, prefill_attention.cpp): their input
// checks, the cache dtype dispatch, AVX-512 vector math and the work split over threads.

#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>

#define KILOTOK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

namespace kilotok_cpu {

constexpr int64_t LANES = 16;

inline bool avx512_supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

// q [rows, heads, head_dim] float32 and the paged caches [blocks, block_size, kv_heads, head_dim] it reads.
inline void check_query_and_caches(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                                   const char* rows) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == torch::kFloat && q.is_contiguous(), "q must be a contiguous float32 [",
              rows, ", heads, head_dim] tensor");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.sizes() == v_cache.sizes() && k_cache.scalar_type() == v_cache.scalar_type(),
              "the caches must be contiguous [blocks, block_size, kv_heads, head_dim] tensors of one dtype");
  TORCH_CHECK(k_cache.size(3) == q.size(2) && q.size(1) % k_cache.size(2) == 0,
              "the caches' head_dim must match q's and their kv_heads divide q's heads");
}

// Calls run(T{}) with T the caches' element type: float or at::BFloat16.
template <typename Run>
void dispatch_cache_dtype(const torch::Tensor& k_cache, const Run& run) {
  if (k_cache.scalar_type() == torch::kFloat) return run(float{});
  TORCH_CHECK(k_cache.scalar_type() == torch::kBFloat16, "the caches must be float32 or bfloat16");
  run(at::BFloat16{});
}

KILOTOK_AVX512 inline __mmask16 lanes_below(int64_t count) {
  return count >= LANES ? static_cast<__mmask16>(0xFFFF)
                        : static_cast<__mmask16>((1u << std::max<int64_t>(count, 0)) - 1u);
}

// e^x for x <= 0 (scores less their maximum): 2^k * e^r with |r| <= ln2 / 2, e^r by the Cephes polynomial
// (relative error about 1e-7).
KILOTOK_AVX512 inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));  // e^-104 is below the smallest float: the result is 0
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, k);
}

// 16 consecutive cache elements (the lanes under `mask`, the others 0) as floats.
KILOTOK_AVX512 inline __m512 load16(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
KILOTOK_AVX512 inline __m512 load16(const at::BFloat16* p, __mmask16 mask) {
  const __m256i bits = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// Lane k of the result: the sum of v[k]'s 16 lanes, by the same tree of additions for every k (lane j
// meets lane j + 8, then j + 4, j + 2, j + 1), so a sum does not depend on which slot it was computed in.
KILOTOK_AVX512 inline __m512 sum_each16(const __m512 (&v)[16]) {
  __m512 halves[8], quarters[4], eighths[2];
  for (int i = 0; i < 8; ++i)
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int i = 0; i < 4; ++i)
    quarters[i] = _mm512_add_ps(_mm512_shuffle_f32x4(halves[2 * i], halves[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_f32x4(halves[2 * i], halves[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int i = 0; i < 2; ++i)
    eighths[i] = _mm512_add_ps(_mm512_shuffle_ps(quarters[2 * i], quarters[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_ps(quarters[2 * i], quarters[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(eighths[0], eighths[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_ps(eighths[0], eighths[1], _MM_SHUFFLE(3, 1, 3, 1)));
  // The shuffles leave the sum of v[k] in lane 4 * (k % 4) + k / 4.
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, sums);
}

// out[0:D] = sum over j < n of weights[j * stride] * scale * the cache row at rows[j] (a flat element
// offset), summed in order of j; up to 128 columns in registers at a time.
template <typename T>
KILOTOK_AVX512 void weigh_values(const float* weights, int64_t stride, float scale, const T* cache,
                                 const int64_t* rows, int64_t n, int64_t D, float* out) {
  for (int64_t c0 = 0; c0 < D; c0 += 8 * LANES) {
    __mmask16 masks[8];
    __m512 acc[8];
    for (int c = 0; c < 8; ++c) {
      masks[c] = lanes_below(D - c0 - c * LANES);
      acc[c] = _mm512_setzero_ps();
    }
    for (int64_t j = 0; j < n; ++j) {
      const __m512 w = _mm512_set1_ps(weights[j * stride] * scale);
      const T* row = cache + rows[j] + c0;
      for (int c = 0; c < 8; ++c) {
        if (masks[c]) acc[c] = _mm512_fmadd_ps(w, load16(row + c * LANES, masks[c]), acc[c]);
      }
    }
    for (int c = 0; c < 8; ++c) _mm512_mask_storeu_ps(out + c0 + c * LANES, masks[c], acc[c]);
  }
}

// Calls work(i) for i in [0, count) on torch's threads, dealt round-robin: neighbouring items (one
// sequence's) cost about the same and a long sequence's cost the most, so shares come out even where
// contiguous ranges would not.
template <typename Work>
void parallel_round_robin(int64_t count, const Work& work) {
  const int64_t shares = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
  at::parallel_for(0, shares, 1, [&](int64_t first_share, int64_t end_share) {
    for (int64_t share = first_share; share < end_share; ++share) {
      for (int64_t i = share; i < count; i += shares) work(i);
    }
  });
}

}  // namespace kilotok_cpu
