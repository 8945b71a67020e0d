// Decode attention over a gathered key window for x86 CPUs, registered as
// kilotok::gathered_decode_attention; kilotok/kernels/cpu_attention.py builds this file and registers the
// op's fake implementation. The PyTorch reference is kernels/attention.py's `decode_attention_reference`.
//
// Each query row r has a window of L cache slots (index[r, :]) of which valid[r, :] marks the keys it may
// see: a plain decode row's own context, or a draft-tree node's context plus its ancestors. One work item
// is one (row, KV head) pair: the head's group of query heads is scored against each valid key while the
// key is loaded once, then the values are summed with the softmax weights. Nothing is gathered into a
// temporary window and masked keys are skipped rather than weighted by zero, so the work follows the
// valid keys only.
//
// A row's result must not depend on what else is in the batch or how long the window is padded: the
// speculative decoder verifies a tree beside other rows and must reproduce a plain decode bit for bit.
// Every item runs the same instructions over its valid keys in window order, whatever the other rows and
// whichever thread takes it, so that holds.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

#define KILOTOK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

bool cpu_supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}

template <typename T>
KILOTOK_AVX512 inline void load_row(const T* src, int64_t n, float* dst) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

KILOTOK_AVX512 inline float dot(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

struct Shape {
  int64_t heads, kv_heads, group, head_dim, window;
};

// One (row, KV head): `q` holds the group's query heads [group, D] in float, `out` their results.
template <typename T>
KILOTOK_AVX512 void attend(const float* q, const T* k_cache, const T* v_cache, const int64_t* index,
                           const bool* valid, const Shape& s, int64_t kv_head, float scale, float* out,
                           std::vector<int64_t>& slots, std::vector<float>& scores, std::vector<float>& row) {
  const int64_t D = s.head_dim, G = s.group;
  slots.clear();
  for (int64_t j = 0; j < s.window; ++j) {
    if (valid[j]) slots.push_back(index[j]);
  }
  const int64_t n = static_cast<int64_t>(slots.size());
  std::fill(out, out + G * D, 0.0f);
  if (n == 0) return;
  scores.resize(G * n);
  for (int64_t j = 0; j < n; ++j) {
    load_row(k_cache + (slots[j] * s.kv_heads + kv_head) * D, D, row.data());
    for (int64_t g = 0; g < G; ++g) scores[g * n + j] = dot(q + g * D, row.data(), D) * scale;
  }
  for (int64_t g = 0; g < G; ++g) {
    float* p = scores.data() + g * n;
    const float top = *std::max_element(p, p + n);
    float total = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      p[j] = std::exp(p[j] - top);
      total += p[j];
    }
    const float inverse = 1.0f / total;
    for (int64_t j = 0; j < n; ++j) p[j] *= inverse;
  }
  for (int64_t j = 0; j < n; ++j) {
    load_row(v_cache + (slots[j] * s.kv_heads + kv_head) * D, D, row.data());
    for (int64_t g = 0; g < G; ++g) {
      const float weight = scores[g * n + j];
      float* o = out + g * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) o[i] += weight * row[i];
    }
  }
}

template <typename T>
void run(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
         const torch::Tensor& index, const torch::Tensor& valid, double scale, torch::Tensor& out) {
  const Shape s{q.size(1), k_cache.size(2), q.size(1) / k_cache.size(2), q.size(2), index.size(1)};
  const int64_t items = q.size(0) * s.kv_heads;
  const float* q_data = q.data_ptr<float>();
  const T* k_data = k_cache.data_ptr<T>();
  const T* v_data = v_cache.data_ptr<T>();
  const int64_t* index_data = index.data_ptr<int64_t>();
  const bool* valid_data = valid.data_ptr<bool>();
  float* out_data = out.data_ptr<float>();
  // Small items (short windows) are grouped so a thread's share is worth waking it for.
  const int64_t work = std::max<int64_t>(1, s.window * s.group * s.head_dim);
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / work);
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> slots;
    std::vector<float> scores;
    std::vector<float> row(s.head_dim);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / s.kv_heads, h = item % s.kv_heads;
      const int64_t offset = (r * s.heads + h * s.group) * s.head_dim;
      attend<T>(q_data + offset, k_data, v_data, index_data + r * s.window, valid_data + r * s.window, s, h,
                static_cast<float>(scale), out_data + offset, slots, scores, row);
    }
  });
}

// q [R, H, D] float32; caches [blocks, block_size, Hkv, D] float32 or bfloat16; index [R, L] int64 flat
// slots; valid [R, L] bool -> [R, H, D] float32.
torch::Tensor gathered_decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache,
                                        const torch::Tensor& v_cache, const torch::Tensor& index,
                                        const torch::Tensor& valid, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == torch::kFloat && q.is_contiguous(),
              "q must be a contiguous float32 [rows, heads, head_dim] tensor");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.sizes() == v_cache.sizes() && k_cache.scalar_type() == v_cache.scalar_type(),
              "the caches must be contiguous [blocks, block_size, kv_heads, head_dim] tensors of one dtype");
  TORCH_CHECK(k_cache.size(3) == q.size(2) && q.size(1) % k_cache.size(2) == 0,
              "the caches' head_dim must match q's and their kv_heads divide q's heads");
  TORCH_CHECK(index.dim() == 2 && index.scalar_type() == torch::kLong && index.is_contiguous() &&
                  valid.sizes() == index.sizes() && valid.scalar_type() == torch::kBool && valid.is_contiguous() &&
                  index.size(0) == q.size(0),
              "index and valid must be contiguous [rows, window] int64 and bool tensors");
  auto out = torch::empty_like(q);
  if (k_cache.scalar_type() == torch::kFloat) {
    run<float>(q, k_cache, v_cache, index, valid, scale, out);
  } else {
    TORCH_CHECK(k_cache.scalar_type() == torch::kBFloat16, "the caches must be float32 or bfloat16");
    run<at::BFloat16>(q, k_cache, v_cache, index, valid, scale, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kilotok, m) {
  m.def("gathered_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor index, Tensor valid, "
        "float scale) -> Tensor");
  m.def("decode_attention_cpu_supported() -> bool", &cpu_supported);
}

TORCH_LIBRARY_IMPL(kilotok, CPU, m) { m.impl("gathered_decode_attention", &gathered_decode_attention); }
