// Causal attention of a prompt's new tokens over the paged KV cache for x86 CPUs, registered as
// kilotok::paged_prefill_attention; kilotok/kernels/cpu_attention.py builds it beside decode_attention.cpp.
// The PyTorch reference is kernels/attention.py's `paged_attention_reference`, which runs SDPA one
// sequence at a time: at prompt lengths of tens to hundreds of tokens its cost is the per-sequence,
// per-layer tensor bookkeeping, not the arithmetic, and that is what this op removes.
//
// One work item is (sequence, KV head, 16 of the sequence's (new token, query head of the group) pairs),
// one pair per vector lane. For each visible key, read once from the cache, the 16 scores are one FMA per
// head dimension (the queries transposed to [head_dim, 16], the key's element broadcast); the softmax
// runs across keys with every lane masked to its own visible range; then each pair sums its values.
// Nothing is gathered or transposed per key, so the work is the arithmetic plus one read of the keys
// per 16 pairs.
//
// A query's result depends only on the query and its visible keys, not on its lane, the batch or how the
// prompt was split into chunks: a score accumulates over the head dimension in order, masked keys add
// exact zeros to the softmax's sum, and the value sum runs over the query's own keys in order.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_vector.h"

namespace {

using namespace kilotok_cpu;

struct Shape {
  int64_t heads, kv_heads, group, head_dim, block_size, max_blocks, chunk;
};

// One work item: 16 (token, query head) pairs of sequence `sequence` and KV head `kv_head`, numbered
// token * group + g among the sequence's pairs from `first_pair`.
struct Item {
  int64_t sequence, kv_head, first_pair;
};

// Where one sequence's new tokens are: rows first_row.. of q, the last of its context's cached tokens.
struct Prompt {
  int64_t first_row, new_tokens, prefix;
};

// An item's 16 pairs: which lanes hold one, each lane's visible key positions [lowest, position] and
// its row in q / out; every lane sees keys within [first_key, last_key].
struct Lanes {
  __mmask16 active = 0;
  alignas(64) int32_t lowest[LANES] = {}, position[LANES] = {};
  int64_t offsets[LANES] = {};
  int64_t first_key = INT64_MAX, last_key = 0;
};

// The item's lanes, and its queries transposed to [D][16] (zeros in unused lanes).
Lanes load_lanes(const float* q, const Shape& s, const Item& item, const Prompt& prompt, std::vector<float>& queries) {
  const int64_t D = s.head_dim, G = s.group;
  Lanes lanes;
  queries.assign(D * LANES, 0.0f);
  for (int64_t i = 0; i < LANES; ++i) {
    const int64_t pair = item.first_pair + i, t = pair / G, position = prompt.prefix + t;
    if (t >= prompt.new_tokens) continue;
    lanes.active |= static_cast<__mmask16>(1u << i);
    lanes.position[i] = static_cast<int32_t>(position);
    lanes.lowest[i] = static_cast<int32_t>(s.chunk ? position / s.chunk * s.chunk : 0);
    lanes.first_key = std::min<int64_t>(lanes.first_key, lanes.lowest[i]);
    lanes.last_key = std::max<int64_t>(lanes.last_key, position);
    lanes.offsets[i] = ((prompt.first_row + t) * s.heads + item.kv_head * G + pair % G) * D;
    for (int64_t d = 0; d < D; ++d) queries[d * LANES + i] = q[lanes.offsets[i] + d];
  }
  return lanes;
}

// Which lanes see key first_key + j.
KILOTOK_AVX512 inline __mmask16 visible(const Lanes& lanes, __m512i lowest, __m512i position, int64_t j) {
  const __m512i key = _mm512_set1_epi32(static_cast<int32_t>(lanes.first_key + j));
  return static_cast<__mmask16>(lanes.active & _mm512_cmp_epi32_mask(key, lowest, _MM_CMPINT_NLT) &
                                _mm512_cmp_epi32_mask(key, position, _MM_CMPINT_LE));
}

// weights[j][lane] = scale * (query . key j) for the n keys at cache offsets rows[0:n], four keys at a
// time so their FMA chains overlap. weights must have room for n rounded up to 4 keys.
template <typename T>
KILOTOK_AVX512 void score_lanes(const float* queries, const T* k_cache, const int64_t* rows, int64_t n, int64_t D,
                                float scale, float* weights) {
  for (int64_t j = 0; j < n; j += 4) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const T* keys[4];
    for (int u = 0; u < 4; ++u) keys[u] = k_cache + rows[std::min(j + u, n - 1)];
    for (int64_t d = 0; d < D; ++d) {
      const __m512 qd = _mm512_loadu_ps(queries + d * LANES);
      for (int u = 0; u < 4; ++u) {
        acc[u] = _mm512_fmadd_ps(qd, _mm512_set1_ps(static_cast<float>(keys[u][d])), acc[u]);
      }
    }
    for (int u = 0; u < 4; ++u) {
      _mm512_storeu_ps(weights + (j + u) * LANES, _mm512_mul_ps(acc[u], _mm512_set1_ps(scale)));
    }
  }
}

// weights[j][lane] -> e^(score - the lane's maximum) over the lane's visible keys, exactly 0 elsewhere;
// inverse[lane] = 1 / the lane's sum.
KILOTOK_AVX512 void softmax_lanes(const Lanes& lanes, int64_t n, float* weights, float* inverse) {
  const __m512i lowest = _mm512_load_si512(lanes.lowest), position = _mm512_load_si512(lanes.position);
  __m512 top = _mm512_set1_ps(-INFINITY);  // every active lane sees at least its own key
  for (int64_t j = 0; j < n; ++j) {
    top = _mm512_mask_max_ps(top, visible(lanes, lowest, position, j), top, _mm512_loadu_ps(weights + j * LANES));
  }
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    float* w = weights + j * LANES;
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(w), top));
    const __m512 kept = _mm512_maskz_mov_ps(visible(lanes, lowest, position, j), e);
    total = _mm512_add_ps(total, kept);
    _mm512_storeu_ps(w, kept);
  }
  const __m512 sums = _mm512_mask_mov_ps(_mm512_set1_ps(1.0f), lanes.active, total);
  _mm512_storeu_ps(inverse, _mm512_div_ps(_mm512_set1_ps(1.0f), sums));
}

template <typename T>
KILOTOK_AVX512 void attend(const float* q, const T* k_cache, const T* v_cache, const int32_t* blocks,
                           const Shape& s, const Item& item, const Prompt& prompt, float scale, float* out,
                           std::vector<float>& queries, std::vector<float>& weights, std::vector<int64_t>& rows) {
  const int64_t D = s.head_dim;
  const Lanes lanes = load_lanes(q, s, item, prompt, queries);
  const int64_t n = lanes.last_key - lanes.first_key + 1;
  rows.resize(n);
  for (int64_t j = 0, block = lanes.first_key / s.block_size, offset = lanes.first_key % s.block_size; j < n; ++j) {
    rows[j] = ((blocks[block] * s.block_size + offset) * s.kv_heads + item.kv_head) * D;
    if (++offset == s.block_size) offset = 0, ++block;
  }
  weights.resize((n + 3) * LANES);
  score_lanes(queries.data(), k_cache, rows.data(), n, D, scale, weights.data());
  float inverse[LANES];
  softmax_lanes(lanes, n, weights.data(), inverse);
  // Each pair's values over its own keys, in order.
  for (int64_t i = 0; i < LANES; ++i) {
    if (!(lanes.active >> i & 1)) continue;
    const int64_t begin = lanes.lowest[i] - lanes.first_key, end = lanes.position[i] - lanes.first_key + 1;
    weigh_values(weights.data() + begin * LANES + i, LANES, inverse[i], v_cache, rows.data() + begin, end - begin,
                 D, out + lanes.offsets[i]);
  }
}

template <typename T>
void run(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
         const torch::Tensor& block_tables, const int32_t* lens, const int32_t* starts, const std::vector<Item>& items,
         const Shape& s, double scale, torch::Tensor& out) {
  const float* q_data = q.data_ptr<float>();
  const T* k_data = k_cache.data_ptr<T>();
  const T* v_data = v_cache.data_ptr<T>();
  const int32_t* table_data = block_tables.data_ptr<int32_t>();
  float* out_data = out.data_ptr<float>();
  parallel_round_robin(static_cast<int64_t>(items.size()), [&](int64_t i) {
    thread_local std::vector<float> queries, weights;
    thread_local std::vector<int64_t> rows;
    const Item& item = items[i];
    const int64_t b = item.sequence, new_tokens = starts[b + 1] - starts[b];
    const Prompt prompt{starts[b], new_tokens, lens[b] - new_tokens};
    attend<T>(q_data, k_data, v_data, table_data + b * s.max_blocks, s, item, prompt, static_cast<float>(scale),
              out_data, queries, weights, rows);
  });
}

// q [T, H, D] float32; caches [blocks, block_size, Hkv, D] float32 or bfloat16; block_tables [B, max_blocks]
// int32; context_lens [B] int32 (cached tokens after this step's are written); query_start_loc [B + 1]
// int32; chunk > 0 limits each query to keys of its own chunk of positions -> [T, H, D] float32.
torch::Tensor paged_prefill_attention(const torch::Tensor& q, const torch::Tensor& k_cache,
                                      const torch::Tensor& v_cache, const torch::Tensor& block_tables,
                                      const torch::Tensor& context_lens, const torch::Tensor& query_start_loc,
                                      double scale, int64_t chunk) {
  check_query_and_caches(q, k_cache, v_cache, "tokens");
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
  std::vector<Item> items;
  for (int64_t b = 0; b < context_lens.numel(); ++b) {
    const int64_t rows = start_data[b + 1] - start_data[b], prefix = len_data[b] - rows;
    TORCH_CHECK(rows >= 0 && prefix >= 0 && len_data[b] <= s.max_blocks * s.block_size,
                "each sequence's context length must cover its new tokens and fit its block table");
    for (int64_t h = 0; h < s.kv_heads; ++h) {
      for (int64_t pair = 0; pair < rows * s.group; pair += LANES) items.push_back({b, h, pair});
    }
  }
  auto out = torch::empty_like(q);
  dispatch_cache_dtype(k_cache, [&](auto element) {
    run<decltype(element)>(q, k_cache, v_cache, block_tables, len_data, start_data, items, s, scale, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kilotok, m) {
  m.def("paged_prefill_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor context_lens, Tensor query_start_loc, float scale, int chunk) -> Tensor");
  }

TORCH_LIBRARY_IMPL(kilotok, CPU, m) { m.impl("paged_prefill_attention", &paged_prefill_attention); }
