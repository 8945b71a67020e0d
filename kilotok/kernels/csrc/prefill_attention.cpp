// Causal attention of a prompt's new tokens over the paged KV cache for x86 CPUs, registered as
// kilotok::paged_prefill_attention; kilotok/kernels/cpu_attention.py builds it beside decode_attention.cpp.
// The PyTorch reference is kernels/attention.py's `paged_attention_reference`, which runs SDPA one
// sequence at a time: at prompt lengths of tens to hundreds of tokens its cost is the per-sequence,
// per-layer tensor bookkeeping, not the arithmetic, and that is what this op removes.
//
// One work item is (sequence, KV head, tile of up to QUERY_TILE new tokens). The item gathers the keys the
// tile can see once, transposed to [head_dim, keys] so that scores for 16 keys are one vector FMA per
// dimension, and the values as [keys, head_dim]. Then each query head of the group, for each token:
// scores over its own visible keys, softmax, weighted sum of values.
//
// A query's result depends only on the query and its visible keys, not on the tile, the batch or how
// the prompt was split into chunks: scores accumulate over the head dimension in order, and the softmax
// and the value sum run over the query's own keys, in order, with vector lanes counted from its first.

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

#define KILOTOK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

constexpr int64_t QUERY_TILE = 8;
constexpr int64_t LANES = 16;

KILOTOK_AVX512 inline __mmask16 lanes_below(int64_t count) {
  return count >= LANES ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << count) - 1u);
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

struct Shape {
  int64_t heads, kv_heads, group, head_dim, block_size, max_blocks, chunk;
};

// Where a tile's keys sit: flat cache rows of key positions first .. first + count - 1.
struct KeyRange {
  int64_t first, count;
};

template <typename T>
void gather_keys(const T* k_cache, const T* v_cache, const int32_t* blocks, const Shape& s, int64_t kv_head,
                 KeyRange keys, int64_t stride, float* keys_t, float* values) {
  const int64_t D = s.head_dim;
  for (int64_t j = 0; j < keys.count; ++j) {
    const int64_t position = keys.first + j;
    const int64_t slot = static_cast<int64_t>(blocks[position / s.block_size]) * s.block_size +
                         position % s.block_size;
    const T* k = k_cache + (slot * s.kv_heads + kv_head) * D;
    const T* v = v_cache + (slot * s.kv_heads + kv_head) * D;
    for (int64_t d = 0; d < D; ++d) {
      keys_t[d * stride + j] = static_cast<float>(k[d]);
      values[j * D + d] = static_cast<float>(v[d]);
    }
  }
}

// scores[0:n] = scale * (q . key j) for the n keys from column `first` of keys_t, four 16-key blocks at a
// time so the FMA chains overlap.
KILOTOK_AVX512 void score_keys(const float* q, const float* keys_t, int64_t stride, int64_t D, int64_t first,
                               int64_t n, float scale, float* scores) {
  for (int64_t j = 0; j < n; j += 4 * LANES) {
    __mmask16 masks[4];
    __m512 acc[4];
    for (int b = 0; b < 4; ++b) {
      masks[b] = lanes_below(std::max<int64_t>(0, n - j - b * LANES));
      acc[b] = _mm512_setzero_ps();
    }
    for (int64_t d = 0; d < D; ++d) {
      const __m512 qd = _mm512_set1_ps(q[d]);
      const float* row = keys_t + d * stride + first + j;
      for (int b = 0; b < 4; ++b)
        acc[b] = _mm512_fmadd_ps(qd, _mm512_maskz_loadu_ps(masks[b], row + b * LANES), acc[b]);
    }
    for (int b = 0; b < 4; ++b)
      _mm512_mask_storeu_ps(scores + j + b * LANES, masks[b], _mm512_mul_ps(acc[b], _mm512_set1_ps(scale)));
  }
}

// scores[0:n] -> their softmax, in place.
KILOTOK_AVX512 void softmax(float* scores, int64_t n) {
  __m512 top = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += LANES)
    top = _mm512_mask_max_ps(top, lanes_below(n - j), top, _mm512_loadu_ps(scores + j));
  const __m512 peak = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += LANES) {
    const __mmask16 mask = lanes_below(n - j);
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, scores + j), peak));
    total = _mm512_mask_add_ps(total, mask, total, e);
    _mm512_mask_storeu_ps(scores + j, mask, e);
  }
  const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
  for (int64_t j = 0; j < n; j += LANES) {
    const __mmask16 mask = lanes_below(n - j);
    _mm512_mask_storeu_ps(scores + j, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, scores + j), inverse));
  }
}

// out[0:D] = sum over j of weights[j] * values[j, :], up to 128 columns held in registers at a time.
KILOTOK_AVX512 void weigh_values(const float* weights, const float* values, int64_t n, int64_t D, float* out) {
  for (int64_t c0 = 0; c0 < D; c0 += 8 * LANES) {
    __mmask16 masks[8];
    __m512 acc[8];
    for (int c = 0; c < 8; ++c) {
      masks[c] = lanes_below(std::max<int64_t>(0, D - c0 - c * LANES));
      acc[c] = _mm512_setzero_ps();
    }
    for (int64_t j = 0; j < n; ++j) {
      const __m512 w = _mm512_set1_ps(weights[j]);
      const float* row = values + j * D + c0;
      for (int c = 0; c < 8; ++c) {
        if (masks[c]) acc[c] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(masks[c], row + c * LANES), acc[c]);
      }
    }
    for (int c = 0; c < 8; ++c) _mm512_mask_storeu_ps(out + c0 + c * LANES, masks[c], acc[c]);
  }
}

struct Tile {
  int64_t sequence, first_row, rows, first_position;  // rows of q; the first row's position
};

template <typename T>
void run(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
         const torch::Tensor& block_tables, const std::vector<Tile>& tiles, const Shape& s, double scale,
         torch::Tensor& out) {
  const float* q_data = q.data_ptr<float>();
  const T* k_data = k_cache.data_ptr<T>();
  const T* v_data = v_cache.data_ptr<T>();
  const int32_t* table_data = block_tables.data_ptr<int32_t>();
  float* out_data = out.data_ptr<float>();
  const int64_t D = s.head_dim, items = static_cast<int64_t>(tiles.size()) * s.kv_heads;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> keys_t, values, scores;
    for (int64_t item = begin; item < end; ++item) {
      const Tile& tile = tiles[item / s.kv_heads];
      const int64_t kv_head = item % s.kv_heads;
      const auto lowest = [&](int64_t position) { return s.chunk ? position / s.chunk * s.chunk : 0; };
      const KeyRange keys{lowest(tile.first_position), tile.first_position + tile.rows - lowest(tile.first_position)};
      const int64_t stride = (keys.count + LANES - 1) / LANES * LANES;
      keys_t.resize(D * stride);
      values.resize(keys.count * D);
      scores.resize(stride);
      gather_keys<T>(k_data, v_data, table_data + tile.sequence * s.max_blocks, s, kv_head, keys, stride,
                     keys_t.data(), values.data());
      for (int64_t r = 0; r < tile.rows; ++r) {
        const int64_t position = tile.first_position + r;
        const int64_t first = lowest(position) - keys.first, n = position + 1 - lowest(position);
        for (int64_t g = 0; g < s.group; ++g) {
          const int64_t offset = ((tile.first_row + r) * s.heads + kv_head * s.group + g) * D;
          score_keys(q_data + offset, keys_t.data(), stride, D, first, n, static_cast<float>(scale), scores.data());
          softmax(scores.data(), n);
          weigh_values(scores.data(), values.data() + first * D, n, D, out_data + offset);
        }
      }
    }
  });
}

bool cpu_supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

// q [T, H, D] float32; caches [blocks, block_size, Hkv, D] float32 or bfloat16; block_tables [B, max_blocks]
// int32; context_lens [B] int32 (cached tokens after this step's are written); query_start_loc [B + 1]
// int32; chunk > 0 limits each query to keys of its own chunk of positions -> [T, H, D] float32.
torch::Tensor paged_prefill_attention(const torch::Tensor& q, const torch::Tensor& k_cache,
                                      const torch::Tensor& v_cache, const torch::Tensor& block_tables,
                                      const torch::Tensor& context_lens, const torch::Tensor& query_start_loc,
                                      double scale, int64_t chunk) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == torch::kFloat && q.is_contiguous(),
              "q must be a contiguous float32 [tokens, heads, head_dim] tensor");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.sizes() == v_cache.sizes() && k_cache.scalar_type() == v_cache.scalar_type(),
              "the caches must be contiguous [blocks, block_size, kv_heads, head_dim] tensors of one dtype");
  TORCH_CHECK(k_cache.size(3) == q.size(2) && q.size(1) % k_cache.size(2) == 0,
              "the caches' head_dim must match q's and their kv_heads divide q's heads");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.scalar_type() == torch::kInt && block_tables.is_contiguous() &&
                  context_lens.scalar_type() == torch::kInt && query_start_loc.scalar_type() == torch::kInt &&
                  context_lens.numel() == block_tables.size(0) && query_start_loc.numel() == context_lens.numel() + 1,
              "block_tables [B, max_blocks], context_lens [B] and query_start_loc [B + 1] must be int32");
  const Shape s{q.size(1), k_cache.size(2), q.size(1) / k_cache.size(2), q.size(2), k_cache.size(1),
                block_tables.size(1), chunk};
  const auto lens = context_lens.contiguous();
  const auto starts = query_start_loc.contiguous();
  const int32_t* len_data = lens.data_ptr<int32_t>();
  const int32_t* start_data = starts.data_ptr<int32_t>();
  TORCH_CHECK(start_data[0] == 0 && start_data[context_lens.numel()] == q.size(0),
              "query_start_loc must run from 0 to the number of query rows");
  std::vector<Tile> tiles;
  for (int64_t b = 0; b < context_lens.numel(); ++b) {
    const int64_t first_row = start_data[b], rows = start_data[b + 1] - first_row, prefix = len_data[b] - rows;
    TORCH_CHECK(rows >= 0 && prefix >= 0 && len_data[b] <= s.max_blocks * s.block_size,
                "each sequence's context length must cover its new tokens and fit its block table");
    for (int64_t r = 0; r < rows; r += QUERY_TILE)
      tiles.push_back({b, first_row + r, std::min(QUERY_TILE, rows - r), prefix + r});
  }
  auto out = torch::empty_like(q);
  if (k_cache.scalar_type() == torch::kFloat) {
    run<float>(q, k_cache, v_cache, block_tables, tiles, s, scale, out);
  } else {
    TORCH_CHECK(k_cache.scalar_type() == torch::kBFloat16, "the caches must be float32 or bfloat16");
    run<at::BFloat16>(q, k_cache, v_cache, block_tables, tiles, s, scale, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kilotok, m) {
  m.def("paged_prefill_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor context_lens, Tensor query_start_loc, float scale, int chunk) -> Tensor");
  m.def("prefill_attention_cpu_supported() -> bool", &cpu_supported);
}

TORCH_LIBRARY_IMPL(kilotok, CPU, m) { m.impl("paged_prefill_attention", &paged_prefill_attention); }
