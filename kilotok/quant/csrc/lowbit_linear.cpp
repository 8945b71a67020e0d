// Multi-row linear layers over 4-bit (GGUF Q4_0/Q4_1) and 8-bit (per-channel) weights for x86 CPUs with
// AVX-512 VNNI. Registered as kilotok::q4_linear and kilotok::q8_linear; kilotok/quant/lowbit.py builds
// this file, repacks weights into the layout below, and registers the ops' fake implementations.
//
// Activations are quantized per row in blocks of 32 (int8 values, one float scale per block, and the
// block's exact float sum). A tile of 16 output columns holds one int32 lane per column; vpdpbusd adds,
// per lane, four u8 x s8 products, so a block of 32 inputs is 8 instructions per row. Each weight tile
// is loaded and unpacked once per block and applied to up to kRows rows, which is what makes extra rows
// cheap: at one row a step reads the weights, at eight rows it reads them once and multiplies 8 times.
//
// Q4 (w = d * q + m, q in 0..15): the codes are the unsigned operand and the activations the signed one;
// per block, out += d * da * dot(q, a) + m * sum(x). Q4_0 (w = d * (q - 8)) is m = -8 d.
// Q8 (w = d * c, c in -127..127: GGUF Q8_0, or per-channel int8 with the same d in every block): the codes
// are the signed operand and the activations, shifted by 128, the unsigned one; per block,
// out += d * da * (dot(a + 128, c) - 128 * sum(c)).
//
// Block scales (and Q4 minimums) are stored as float16 where that is exact, as GGUF's own are: at one row
// a step only streams the weights, and float32 scales would add half again to the 4-bit codes' bytes.
// Other weights keep float32 scales; each kernel is built for both.
//
// Every row is computed by the same instructions in the same order whatever the number of rows and
// their position in a tile, and threads split output columns only, so a row's result does not depend
// on what else is in the batch.

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>

namespace {

constexpr int64_t kBlock = 32;
constexpr int64_t kTile = 16;
// Rows of a tile. Their dot products advance together, each weight step applied to every row before the
// next, so kRows independent vpdpbusd chains are in flight instead of one row's chain of eight; kRows
// accumulators, kRows dot products and 8 weight steps fill the 32 zmm registers without spilling.
constexpr int kRows = 8;
// Rows whose quantized activations a thread keeps in its L2 cache while it walks its column tiles; a
// prompt's thousands of rows would otherwise be streamed from memory once per tile. A multiple of kRows,
// so rows fall into the same groups of kRows however many there are.
constexpr int64_t kRowChunk = 64;

#define KILOTOK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// How far ahead of its loads a tile asks for weight codes. A thread reads its tiles' codes as one
// sequential stream, but at few rows it computes too little per byte for the hardware prefetcher alone to
// keep it fed from memory; the bytes of eight 4-bit blocks.
constexpr int64_t kPrefetchBytes = 2048;

// Asks for the `bytes` (a multiple of 64) of codes kPrefetchBytes past `block`.
KILOTOK_AVX512 inline void prefetch_codes(const void* block, int bytes) {
  const char* ahead = static_cast<const char*>(block) + kPrefetchBytes;
  for (int line = 0; line < bytes; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
}

bool cpu_supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

// Row r of x (k floats) -> blocks of 32 int8 values (offset by 128 when `unsigned_codes`), each block's
// scale amax / 127 and its exact float sum. Positions past k are zero.
KILOTOK_AVX512 void quantize_row(const float* x, int64_t k, int64_t blocks, bool unsigned_codes, int8_t* codes,
                                 float* scales, float* sums) {
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t start = b * kBlock;
    const int64_t valid = std::min<int64_t>(kBlock, k - start);
    const __mmask16 lo_mask = valid >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << valid) - 1);
    const __mmask16 hi_mask = valid <= 16 ? 0 : valid >= 32 ? 0xFFFF : static_cast<__mmask16>((1u << (valid - 16)) - 1);
    const __m512 lo = _mm512_maskz_loadu_ps(lo_mask, x + start);
    const __m512 hi = _mm512_maskz_loadu_ps(hi_mask, x + start + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
    const __m512 inverse = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    __m128i q_lo = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(lo, inverse)));
    __m128i q_hi = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(hi, inverse)));
    if (unsigned_codes) {
      const __m128i shift = _mm_set1_epi8(static_cast<char>(0x80));
      q_lo = _mm_xor_si128(q_lo, shift);
      q_hi = _mm_xor_si128(q_hi, shift);
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + start), q_lo);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + start + 16), q_hi);
    scales[b] = amax / 127.0f;
    sums[b] = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
  }
}

// 16 block scales as floats, from float32 or float16 storage.
KILOTOK_AVX512 inline __m512 load_scales(const float* p) { return _mm512_loadu_ps(p); }
KILOTOK_AVX512 inline __m512 load_scales(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

struct Activations {
  torch::Tensor codes;   // [M, blocks * 32] int8
  torch::Tensor scales;  // [M, blocks] float
  torch::Tensor sums;    // [M, blocks] float
};

Activations quantize_activations(const torch::Tensor& x, int64_t blocks, bool unsigned_codes) {
  const int64_t rows = x.size(0), k = x.size(1);
  Activations a{torch::empty({rows, blocks * kBlock}, x.options().dtype(torch::kInt8)),
                torch::empty({rows, blocks}, x.options()), torch::empty({rows, blocks}, x.options())};
  const float* data = x.data_ptr<float>();
  at::parallel_for(0, rows, kRowChunk, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      quantize_row(data + r * k, k, blocks, unsigned_codes, a.codes.data_ptr<int8_t>() + r * blocks * kBlock,
                   a.scales.data_ptr<float>() + r * blocks, a.sums.data_ptr<float>() + r * blocks);
    }
  });
  return a;
}

// dot[r] = one block's 16 column dot products for each of R rows starting at `a` (32 inputs a row). The
// unsigned operand is the weights (Q4's codes) or the activations (Q8's, offset by 128).
template <int R, bool kUnsignedWeights>
KILOTOK_AVX512 inline __attribute__((always_inline)) void block_dots(const __m512i* w, const int8_t* a,
                                                                     int64_t a_stride, __m512i* dot) {
  for (int r = 0; r < R; ++r) dot[r] = _mm512_setzero_si512();
  for (int step = 0; step < 8; ++step) {
    for (int r = 0; r < R; ++r) {
      const __m512i x = _mm512_set1_epi32(reinterpret_cast<const int32_t*>(a + r * a_stride)[step]);
      dot[r] = kUnsignedWeights ? _mm512_dpbusd_epi32(dot[r], w[step], x) : _mm512_dpbusd_epi32(dot[r], x, w[step]);
    }
  }
}

// One tile of 16 output columns for R rows. codes: [blocks][4][64] bytes, two 4-bit steps per byte
// (low nibble step 2j, high nibble step 2j + 1; each step 16 columns x 4 inputs); d, m: [blocks][16].
template <int R, typename S>
KILOTOK_AVX512 void q4_tile(const uint8_t* codes, const S* d, const S* m, const int8_t* a, const float* da,
                            const float* sums, int64_t blocks, float* out, int64_t out_stride, __mmask16 columns) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const int64_t a_stride = blocks * kBlock;
  for (int64_t b = 0; b < blocks; ++b) {
    prefetch_codes(codes + b * 256, 256);
    __m512i w[8];
    for (int j = 0; j < 4; ++j) {
      const __m512i packed = _mm512_loadu_si512(codes + (b * 4 + j) * 64);
      w[2 * j] = _mm512_and_si512(packed, nibble);
      w[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
    }
    __m512i dot[R];
    block_dots<R, true>(w, a + b * kBlock, a_stride, dot);
    const __m512 dw = load_scales(d + b * kTile);
    const __m512 mw = load_scales(m + b * kTile);
    for (int r = 0; r < R; ++r) {
      const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(da[r * blocks + b]));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r]), scale, acc[r]);
      acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sums[r * blocks + b]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(out + r * out_stride, columns, acc[r]);
}

// One tile for R rows of int8 weights. codes: [blocks][8][64] int8; code_sums: [blocks][16] int16 holding
// the block's column sums; d: [blocks][16].
template <int R, typename S>
KILOTOK_AVX512 void q8_tile(const int8_t* codes, const int16_t* code_sums, const S* d, const int8_t* a,
                            const float* da, int64_t blocks, float* out, int64_t out_stride, __mmask16 columns) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const int64_t a_stride = blocks * kBlock;
  for (int64_t b = 0; b < blocks; ++b) {
    prefetch_codes(codes + b * 512, 512);
    __m512i w[8];
    for (int step = 0; step < 8; ++step) w[step] = _mm512_loadu_si512(codes + (b * 8 + step) * 64);
    const __m512i correction =
        _mm512_slli_epi32(_mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(code_sums + b * kTile))), 7);
    __m512i dot[R];
    block_dots<R, false>(w, a + b * kBlock, a_stride, dot);
    const __m512 dw = load_scales(d + b * kTile);
    for (int r = 0; r < R; ++r) {
      const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(da[r * blocks + b]));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(dot[r], correction)), scale, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(out + r * out_stride, columns, acc[r]);
}

// Calls `tile(R, first_row)` with R = n as a compile-time constant, 1 <= n <= kRows.
template <int R = kRows, typename Tile>
void call_with_rows(int64_t n, Tile& tile, int64_t first) {
  if constexpr (R > 1) {
    if (n < R) return call_with_rows<R - 1>(n, tile, first);
  }
  tile(std::integral_constant<int, R>{}, first);
}

// Calls `tile(R, first_row)` for every group of up to kRows rows in [first, end).
template <typename Tile>
void for_row_groups(int64_t first, int64_t end, Tile tile) {
  for (; first < end; first += kRows) call_with_rows(std::min<int64_t>(kRows, end - first), tile, first);
}

// Calls `tile_rows(t, first, end)` for every column tile t in [begin, end) and every chunk of kRowChunk
// rows, chunks outermost.
template <typename TileRows>
void for_tiles_by_row_chunks(int64_t begin, int64_t end, int64_t rows, TileRows tile_rows) {
  for (int64_t chunk = 0; chunk < rows; chunk += kRowChunk) {
    for (int64_t t = begin; t < end; ++t) tile_rows(t, chunk, std::min(rows, chunk + kRowChunk));
  }
}

// Calls `tile(R, t, first_row)` for every column tile t and group of up to kRows rows, tiles split over
// threads.
template <typename Tile>
void for_each_tile_and_row_group(int64_t tiles, int64_t rows, Tile tile) {
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for_tiles_by_row_chunks(begin, end, rows, [&](int64_t t, int64_t first_row, int64_t end_row) {
      for_row_groups(first_row, end_row, [&](auto group, int64_t first) { tile(group, t, first); });
    });
  });
}

__mmask16 tile_columns(int64_t tile, int64_t out_features) {
  const int64_t valid = std::min(kTile, out_features - tile * kTile);
  return valid >= kTile ? 0xFFFF : static_cast<__mmask16>((1u << valid) - 1);
}

void check_input(const torch::Tensor& x, int64_t blocks, int64_t tiles, int64_t out_features) {
  TORCH_CHECK(cpu_supported(), "kilotok low-bit linear needs AVX-512 VNNI, which this processor lacks");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous(),
              "x must be a contiguous 2-D float32 tensor");
  TORCH_CHECK((x.size(1) + kBlock - 1) / kBlock == blocks, "x has ", x.size(1), " columns, the weight ",
              blocks * kBlock);
  TORCH_CHECK(tiles * kTile >= out_features && out_features > (tiles - 1) * kTile,
              "out_features ", out_features, " does not match ", tiles, " tiles of ", kTile);
}

// Calls `body(S{})` with S the C++ type of `scales`' storage, float32 or float16.
template <typename Body>
void dispatch_scales(const torch::Tensor& scales, int64_t tiles, int64_t blocks, Body body) {
  TORCH_CHECK(scales.is_contiguous() && scales.dim() == 3 && scales.size(0) == tiles && scales.size(1) == blocks &&
                  scales.size(2) == kTile,
              "scales must be contiguous [tiles, blocks, 16], as the codes");
  if (scales.scalar_type() == torch::kHalf) return body(at::Half{});
  TORCH_CHECK(scales.scalar_type() == torch::kFloat, "scales must be float32 or float16");
  body(float{});
}

torch::Tensor q4_linear(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& scales,
                        const torch::Tensor& mins, int64_t out_features) {
  const int64_t tiles = codes.size(0), blocks = codes.size(1);
  check_input(x, blocks, tiles, out_features);
  TORCH_CHECK(codes.scalar_type() == torch::kUInt8 && codes.is_contiguous() && codes.size(2) == 4 && codes.size(3) == 64,
              "q4 codes must be contiguous uint8 [tiles, blocks, 4, 64]");
  TORCH_CHECK(mins.scalar_type() == scales.scalar_type() && mins.is_contiguous() && mins.sizes() == scales.sizes(),
              "q4 mins must be contiguous, with the scales' shape and dtype");
  const int64_t rows = x.size(0);
  const Activations a = quantize_activations(x, blocks, /*unsigned_codes=*/false);
  torch::Tensor out = torch::empty({rows, out_features}, x.options());
  const uint8_t* w = codes.data_ptr<uint8_t>();
  dispatch_scales(scales, tiles, blocks, [&](auto scale_type) {
    using S = decltype(scale_type);
    const S* d = static_cast<const S*>(scales.data_ptr());
    const S* m = static_cast<const S*>(mins.data_ptr());
    for_each_tile_and_row_group(tiles, rows, [&](auto group, int64_t t, int64_t first) {
      q4_tile<decltype(group)::value, S>(w + t * blocks * 256, d + t * blocks * kTile, m + t * blocks * kTile,
                                         a.codes.data_ptr<int8_t>() + first * blocks * kBlock,
                                         a.scales.data_ptr<float>() + first * blocks,
                                         a.sums.data_ptr<float>() + first * blocks, blocks,
                                         out.data_ptr<float>() + first * out_features + t * kTile, out_features,
                                         tile_columns(t, out_features));
    });
  });
  return out;
}

torch::Tensor q8_linear(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& scales,
                        const torch::Tensor& code_sums, int64_t out_features) {
  const int64_t tiles = codes.size(0), blocks = codes.size(1);
  check_input(x, blocks, tiles, out_features);
  TORCH_CHECK(codes.scalar_type() == torch::kInt8 && codes.is_contiguous() && codes.size(2) == 8 && codes.size(3) == 64,
              "q8 codes must be contiguous int8 [tiles, blocks, 8, 64]");
  TORCH_CHECK(code_sums.scalar_type() == torch::kShort && code_sums.is_contiguous() && code_sums.sizes() == scales.sizes(),
              "q8 code sums must be contiguous int16 with the scales' shape");
  const int64_t rows = x.size(0);
  const Activations a = quantize_activations(x, blocks, /*unsigned_codes=*/true);
  torch::Tensor out = torch::empty({rows, out_features}, x.options());
  const int8_t* w = codes.data_ptr<int8_t>();
  const int16_t* c = code_sums.data_ptr<int16_t>();
  dispatch_scales(scales, tiles, blocks, [&](auto scale_type) {
    using S = decltype(scale_type);
    const S* s = static_cast<const S*>(scales.data_ptr());
    for_each_tile_and_row_group(tiles, rows, [&](auto group, int64_t t, int64_t first) {
      q8_tile<decltype(group)::value, S>(w + t * blocks * 512, c + t * blocks * kTile, s + t * blocks * kTile,
                                         a.codes.data_ptr<int8_t>() + first * blocks * kBlock,
                                         a.scales.data_ptr<float>() + first * blocks, blocks,
                                         out.data_ptr<float>() + first * out_features + t * kTile, out_features,
                                         tile_columns(t, out_features));
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kilotok, m) {
  m.def("q4_linear(Tensor x, Tensor codes, Tensor scales, Tensor mins, int out_features) -> Tensor");
  m.def("q8_linear(Tensor x, Tensor codes, Tensor scales, Tensor code_sums, int out_features) -> Tensor");
  m.def("lowbit_cpu_supported() -> bool", &cpu_supported);
}

TORCH_LIBRARY_IMPL(kilotok, CPU, m) {
  m.impl("q4_linear", &q4_linear);
  m.impl("q8_linear", &q8_linear);
}
