// Decode attention over a gathered key window for x86 CPUs, registered as
// kilotok::gathered_decode_attention; kilotok/kernels/cpu_attention.py builds this file and registers the
// op's fake implementation. The PyTorch reference is kernels/attention.py's `decode_attention`.
//
// Each query row r has a window of L cache slots (index[r, :]) of which valid[r, :] marks the keys it may
// see: a plain decode row's own context, or a draft-tree node's context plus its ancestors. One work item
// is one (row, KV head) pair; for each query head of the group it scores the valid keys 16 at a time
// (each key's products summed per vector lane, then the 16 keys' lanes reduced together), takes a
// vectorized softmax, and sums the values with those weights. Nothing is gathered into a temporary
// window and masked keys are skipped rather than weighted by zero, so the work follows the valid keys.
//
// A row's result must not depend on what else is in the batch or how long the window is padded: the
// speculative decoder verifies a tree beside other rows and must reproduce a plain decode bit for bit.
// Every item runs the same instructions over its valid keys in window order (groups of 16 counted from
// its first valid key), whatever the other rows and whichever thread takes it, so that holds.

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_vector.h"

namespace {

using namespace kilotok_cpu;

struct Shape {
  int64_t heads, kv_heads, group, head_dim, window;
};

// scores[0:n] = scale * (q . key j) for the keys at cache offsets rows[0:n], 16 at a time: each key's
// products are summed per lane over the head dimension (the query held in registers, 128 columns at a
// time), then the 16 keys' lanes are reduced together. scores must have room for n rounded up to 16.
template <typename T>
KILOTOK_AVX512 void score_keys(const float* q, const T* k_cache, const int64_t* rows, int64_t n, int64_t D,
                               float scale, float* scores) {
  for (int64_t j0 = 0; j0 < n; j0 += LANES) {
    __m512 partial[16];
    for (int k = 0; k < 16; ++k) partial[k] = _mm512_setzero_ps();
    const int keys = static_cast<int>(std::min<int64_t>(LANES, n - j0));
    for (int64_t c0 = 0; c0 < D; c0 += 8 * LANES) {
      __mmask16 masks[8];
      __m512 query[8];
      for (int c = 0; c < 8; ++c) {
        masks[c] = lanes_below(D - c0 - c * LANES);
        query[c] = _mm512_maskz_loadu_ps(masks[c], q + c0 + c * LANES);
      }
      for (int k = 0; k < keys; ++k) {
        const T* key = k_cache + rows[j0 + k] + c0;
        for (int c = 0; c < 8; ++c) {
          if (masks[c]) partial[k] = _mm512_fmadd_ps(query[c], load16(key + c * LANES, masks[c]), partial[k]);
        }
      }
    }
    _mm512_storeu_ps(scores + j0, _mm512_mul_ps(sum_each16(partial), _mm512_set1_ps(scale)));
  }
}

// p[0:n] -> softmax(p[0:n]) in place, vector lanes counted from p[0].
KILOTOK_AVX512 void softmax(float* p, int64_t n) {
  __m512 top = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += LANES) top = _mm512_mask_max_ps(top, lanes_below(n - j), top, _mm512_loadu_ps(p + j));
  const __m512 peak = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += LANES) {
    const __mmask16 mask = lanes_below(n - j);
    const __m512 e = _mm512_maskz_mov_ps(mask, exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(p + j), peak)));
    total = _mm512_add_ps(total, e);
    _mm512_mask_storeu_ps(p + j, mask, e);
  }
  const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
  for (int64_t j = 0; j < n; j += LANES) {
    const __mmask16 mask = lanes_below(n - j);
    _mm512_mask_storeu_ps(p + j, mask, _mm512_mul_ps(_mm512_loadu_ps(p + j), inverse));
  }
}

// One (row, KV head): `q` holds the group's query heads [group, D] in float, `out` their results.
template <typename T>
KILOTOK_AVX512 void attend(const float* q, const T* k_cache, const T* v_cache, const int64_t* index,
                           const bool* valid, const Shape& s, int64_t kv_head, float scale, float* out,
                           std::vector<int64_t>& rows, std::vector<float>& scores) {
  const int64_t D = s.head_dim, G = s.group;
  rows.clear();
  for (int64_t j = 0; j < s.window; ++j) {
    if (valid[j]) rows.push_back((index[j] * s.kv_heads + kv_head) * D);
  }
  const int64_t n = static_cast<int64_t>(rows.size());
  if (n == 0) {
    std::fill(out, out + G * D, 0.0f);
    return;
  }
  const int64_t padded = (n + LANES - 1) / LANES * LANES;
  scores.resize(padded);
  for (int64_t g = 0; g < G; ++g) {
    score_keys(q + g * D, k_cache, rows.data(), n, D, scale, scores.data());
    softmax(scores.data(), n);
    weigh_values(scores.data(), 1, 1.0f, v_cache, rows.data(), n, D, out + g * D);
  }
}

template <typename T>
void run(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
         const torch::Tensor& index, const torch::Tensor& valid, double scale, torch::Tensor& out) {
  const Shape s{q.size(1), k_cache.size(2), q.size(1) / k_cache.size(2), q.size(2), index.size(1)};
  const float* q_data = q.data_ptr<float>();
  const T* k_data = k_cache.data_ptr<T>();
  const T* v_data = v_cache.data_ptr<T>();
  const int64_t* index_data = index.data_ptr<int64_t>();
  const bool* valid_data = valid.data_ptr<bool>();
  float* out_data = out.data_ptr<float>();
  parallel_round_robin(q.size(0) * s.kv_heads, [&](int64_t item) {
    thread_local std::vector<int64_t> rows;
    thread_local std::vector<float> scores;
    const int64_t r = item / s.kv_heads, h = item % s.kv_heads;
    const int64_t offset = (r * s.heads + h * s.group) * s.head_dim;
    attend<T>(q_data + offset, k_data, v_data, index_data + r * s.window, valid_data + r * s.window, s, h,
              static_cast<float>(scale), out_data + offset, rows, scores);
  });
}

// q [R, H, D] float32; caches [blocks, block_size, Hkv, D] float32 or bfloat16; index [R, L] int64 flat
// slots; valid [R, L] bool -> [R, H, D] float32.
torch::Tensor gathered_decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache,
                                        const torch::Tensor& v_cache, const torch::Tensor& index,
                                        const torch::Tensor& valid, double scale) {
  check_query_and_caches(q, k_cache, v_cache, "rows");
  TORCH_CHECK(index.dim() == 2 && index.scalar_type() == torch::kLong && index.is_contiguous() &&
                  valid.sizes() == index.sizes() && valid.scalar_type() == torch::kBool && valid.is_contiguous() &&
                  index.size(0) == q.size(0),
              "index and valid must be contiguous [rows, window] int64 and bool tensors");
  auto out = torch::empty_like(q);
  dispatch_cache_dtype(k_cache, [&](auto element) {
    run<decltype(element)>(q, k_cache, v_cache, index, valid, scale, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kilotok, m) {
  m.def("gathered_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor index, Tensor valid, "
        "float scale) -> Tensor");
  m.def("attention_cpu_supported() -> bool", &avx512_supported);
}

TORCH_LIBRARY_IMPL(kilotok, CPU, m) { m.impl("gathered_decode_attention", &gathered_decode_attention); }
