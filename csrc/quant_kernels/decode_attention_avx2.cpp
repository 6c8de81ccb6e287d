// AVX2 bodies of decode_attention.h. Stored rows become floats in registers as they are read (F16C for fp16,
// a shift for bf16, int8 -> float for q8_0 with the row's scale folded into its score or its softmax weight), so
// a compact cache costs bandwidth in proportion to its bytes and no extra pass.
//
// Per split, the positions go in tiles of kTile: the tile's scores for all heads of the group (each key row read
// once), the online-softmax update, then the tile's value rows (each read once per 4 heads, from L1) added into
// the group's accumulators.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "decode_attention.h"
#include "simd_avx2.h"
#include "vector_exp_avx2.h"

namespace ember {

namespace {

constexpr int kTile = 32;             // positions per tile: 32 value rows of 64 fp32 dims stay within L1
constexpr int kHeadsPerPass = 4;      // accumulators of 4 heads x 8 lanes, plus the value, fit in 16 registers
constexpr int kMinSplitLen = 256;     // below this a split's fixed cost (its merge) outweighs the extra thread
constexpr int kItemsPerThread = 8;    // dynamic scheduling evens out splits of unequal cost

// 8 stored values of a row, from value index 8 * c, as floats (q8_0: unscaled; the caller applies the scale).
template <KVDtype T>
inline __m256 load8(const uint8_t* row, int c) {
    if constexpr (T == KVDtype::kF32) {
        return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + 8 * c);
    } else if constexpr (T == KVDtype::kF16) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * c)));
    } else if constexpr (T == KVDtype::kBF16) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * c)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
    } else {
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + 8 * c));
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
    }
}

// The factor a row's stored values are multiplied by: its q8_0 scale, else 1.
template <KVDtype T>
inline float row_scale(const uint8_t* row, int head_dim) {
    if constexpr (T == KVDtype::kQ8_0) {
        float scale;
        std::memcpy(&scale, row + head_dim, sizeof(scale));
        return scale;
    } else {
        (void)row;
        (void)head_dim;
        return 1.0f;
    }
}

inline const uint8_t* stored_row(const uint8_t* cache, const uint8_t* fresh, const PagedKV& ctx, int pos,
                                 int kv_head) {
    if (fresh != nullptr && pos == ctx.context_len - 1) return fresh + kv_head * ctx.row_bytes;
    const int64_t block = ctx.block_table[pos / ctx.block_size];
    const int64_t slot = block * ctx.block_size + pos % ctx.block_size;
    return cache + (slot * ctx.num_kv_heads + kv_head) * ctx.row_bytes;
}

struct OnlineSoftmax {
    float* acc;  // [group, head_dim]
    float* max;  // [group]
    float* sum;  // [group]
};

// scores [group, kTile] of positions [first, first + n): scale * q_g . k (times the row's q8_0 scale).
template <KVDtype T>
void tile_scores(const float* q, int group, int head_dim, float scale, const uint8_t* const* keys, int n,
                 float* scores) {
    const int chunks = head_dim / 8;
    for (int i = 0; i < n; ++i) {
        const float row_factor = scale * row_scale<T>(keys[i], head_dim);
        for (int g0 = 0; g0 < group; g0 += kHeadsPerPass) {
            const int heads = std::min(kHeadsPerPass, group - g0);
            __m256 acc[kHeadsPerPass] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                                         _mm256_setzero_ps()};
            for (int c = 0; c < chunks; ++c) {
                const __m256 k = load8<T>(keys[i], c);
                for (int j = 0; j < heads; ++j) {
                    acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (g0 + j) * head_dim + 8 * c), k, acc[j]);
                }
            }
            for (int j = 0; j < heads; ++j) scores[(g0 + j) * kTile + i] = hsum8(acc[j]) * row_factor;
        }
    }
}

// Turns the tile's scores into weights exp(s - running max), rescaling what was accumulated so far when the
// max grows; the weights carry the value rows' q8_0 scales.
template <KVDtype T>
void tile_softmax(float* scores, int n, int group, int head_dim, const uint8_t* const* values,
                  const OnlineSoftmax& state) {
    float value_scales[kTile];
    for (int i = 0; i < n; ++i) value_scales[i] = row_scale<T>(values[i], head_dim);
    for (int g = 0; g < group; ++g) {
        float* s = scores + g * kTile;
        float tile_max = -INFINITY;
        for (int i = 0; i < n; ++i) tile_max = std::max(tile_max, s[i]);
        const float new_max = std::max(state.max[g], tile_max);
        if (new_max > state.max[g]) {
            const float shrink = state.max[g] == -INFINITY ? 0.0f : std::exp(state.max[g] - new_max);
            state.sum[g] *= shrink;
            const __m256 factor = _mm256_set1_ps(shrink);
            float* acc = state.acc + g * head_dim;
            for (int d = 0; d < head_dim; d += 8) _mm256_storeu_ps(acc + d, _mm256_mul_ps(_mm256_loadu_ps(acc + d), factor));
            state.max[g] = new_max;
        }
        const __m256 shift = _mm256_set1_ps(new_max);
        float tile_sum = 0.0f;
        int i = 0;
        for (; i + 8 <= n; i += 8) {
            const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + i), shift));
            tile_sum += hsum8(e);
            _mm256_storeu_ps(s + i, _mm256_mul_ps(e, _mm256_loadu_ps(value_scales + i)));
        }
        for (; i < n; ++i) {
            const float e = std::exp(s[i] - new_max);
            tile_sum += e;
            s[i] = e * value_scales[i];
        }
        state.sum[g] += tile_sum;
    }
}

// acc[g] += sum_i weights[g, i] * v_i: per pass of kHeadsPerPass heads and 16 lanes (8 accumulators), the tile's
// rows in order: half the passes over rows a slot apart in memory of 8 lanes at a time (the value pass at 8k context
// measured 12-37% less CPU time, fp32 to q8_0, single-threaded on a loaded machine).
template <KVDtype T>
void tile_values(const float* weights, const uint8_t* const* values, int n, int group, int head_dim, float* acc) {
    const int chunks = head_dim / 8;
    for (int g0 = 0; g0 < group; g0 += kHeadsPerPass) {
        const int heads = std::min(kHeadsPerPass, group - g0);
        for (int c = 0; c < chunks; c += 2) {
            const bool pair = c + 1 < chunks;
            __m256 low[kHeadsPerPass], high[kHeadsPerPass];
            for (int j = 0; j < heads; ++j) {
                float* a = acc + (g0 + j) * head_dim + 8 * c;
                low[j] = _mm256_loadu_ps(a);
                high[j] = pair ? _mm256_loadu_ps(a + 8) : _mm256_setzero_ps();
            }
            for (int i = 0; i < n; ++i) {
                const __m256 v_low = load8<T>(values[i], c);
                const __m256 v_high = pair ? load8<T>(values[i], c + 1) : _mm256_setzero_ps();
                for (int j = 0; j < heads; ++j) {
                    const __m256 w = _mm256_set1_ps(weights[(g0 + j) * kTile + i]);
                    low[j] = _mm256_fmadd_ps(w, v_low, low[j]);
                    high[j] = _mm256_fmadd_ps(w, v_high, high[j]);
                }
            }
            for (int j = 0; j < heads; ++j) {
                float* a = acc + (g0 + j) * head_dim + 8 * c;
                _mm256_storeu_ps(a, low[j]);
                if (pair) _mm256_storeu_ps(a + 8, high[j]);
            }
        }
    }
}

template <KVDtype T>
void attend_range(const float* q, const PagedKV& ctx, int kv_head, int group, int head_dim, float scale, int begin,
                  int end, float* scores, float* partial) {
    const OnlineSoftmax state{partial, partial + group * head_dim, partial + group * head_dim + group};
    std::fill(partial, partial + group * head_dim, 0.0f);
    std::fill(state.max, state.max + group, -INFINITY);
    std::fill(state.sum, state.sum + group, 0.0f);
    const uint8_t* keys[kTile];
    const uint8_t* values[kTile];
    for (int first = begin; first < end; first += kTile) {
        const int n = std::min(kTile, end - first);
        for (int i = 0; i < n; ++i) {
            keys[i] = stored_row(ctx.key_cache, ctx.new_keys, ctx, first + i, kv_head);
            values[i] = stored_row(ctx.value_cache, ctx.new_values, ctx, first + i, kv_head);
        }

        tile_scores<T>(q, group, head_dim, scale, keys, n, scores);
        tile_softmax<T>(scores, n, group, head_dim, values, state);
        tile_values<T>(scores, values, n, group, head_dim, state.acc);
    }
}

inline uint16_t float_to_bf16(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof(bits));
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
    bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
    return static_cast<uint16_t>(bits >> 16);
}

}  // namespace

int attention_scratch_floats(int group) { return group * kTile; }

int attention_splits(int m, int num_kv_heads, int64_t longest_context, int threads) {
    const int items = m * num_kv_heads;
    const int wanted = (kItemsPerThread * threads + items - 1) / items;
    const int64_t most = std::max<int64_t>(1, longest_context / kMinSplitLen);
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, most)));
}

void store_kv_row(const float* x, KVDtype dtype, int head_dim, uint8_t* dst) {
    switch (dtype) {
        case KVDtype::kF32:
            std::memcpy(dst, x, sizeof(float) * head_dim);
            return;
        case KVDtype::kF16:
            for (int d = 0; d < head_dim; d += 8) {
                const __m128i half = _mm256_cvtps_ph(_mm256_loadu_ps(x + d), _MM_FROUND_TO_NEAREST_INT);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * d), half);
            }
            return;
        case KVDtype::kBF16:
            for (int d = 0; d < head_dim; ++d) {
                const uint16_t v = float_to_bf16(x[d]);
                std::memcpy(dst + 2 * d, &v, sizeof(v));
            }
            return;
        case KVDtype::kQ8_0: {
            float absmax = 0.0f;
            for (int d = 0; d < head_dim; ++d) absmax = std::max(absmax, std::fabs(x[d]));
            // Division, not a reciprocal: the torch reference (kv_cache_format.py) computes the same bits.
            const float scale = absmax / 127.0f;
            for (int d = 0; d < head_dim; ++d) {
                const float q = scale > 0.0f ? std::nearbyint(x[d] / scale) : 0.0f;
                dst[d] = static_cast<uint8_t>(static_cast<int8_t>(std::max(-127.0f, std::min(127.0f, q))));
            }
            std::memcpy(dst + head_dim, &scale, sizeof(scale));
            return;
        }
    }
}

void attend_split(const float* q, const PagedKV& ctx, int kv_head, int group, int head_dim, float scale, int split,
                  int splits, float* scratch, float* partial) {
    const int64_t len = ctx.context_len;
    const int begin = static_cast<int>(len * split / splits);
    const int end = static_cast<int>(len * (split + 1) / splits);
    switch (ctx.dtype) {
        case KVDtype::kF32:
            return attend_range<KVDtype::kF32>(q, ctx, kv_head, group, head_dim, scale, begin, end, scratch, partial);
        case KVDtype::kF16:
            return attend_range<KVDtype::kF16>(q, ctx, kv_head, group, head_dim, scale, begin, end, scratch, partial);
        case KVDtype::kBF16:
            return attend_range<KVDtype::kBF16>(q, ctx, kv_head, group, head_dim, scale, begin, end, scratch, partial);
        case KVDtype::kQ8_0:
            return attend_range<KVDtype::kQ8_0>(q, ctx, kv_head, group, head_dim, scale, begin, end, scratch, partial);
    }
}

void merge_splits(const float* partials, int splits, int group, int head_dim, float* out) {
    const int stride = partial_floats(group, head_dim);
    for (int g = 0; g < group; ++g) {
        float top = -INFINITY;
        for (int s = 0; s < splits; ++s) top = std::max(top, partials[s * stride + group * head_dim + g]);
        float total = 0.0f;
        float* o = out + g * head_dim;
        std::fill(o, o + head_dim, 0.0f);
        for (int s = 0; s < splits; ++s) {
            const float* part = partials + s * stride;
            const float split_max = part[group * head_dim + g];
            if (split_max == -INFINITY) continue;  // an empty split
            const float weight = std::exp(split_max - top);
            total += weight * part[group * head_dim + group + g];
            const __m256 w = _mm256_set1_ps(weight);
            for (int d = 0; d < head_dim; d += 8) {
                _mm256_storeu_ps(o + d, _mm256_fmadd_ps(w, _mm256_loadu_ps(part + g * head_dim + d), _mm256_loadu_ps(o + d)));
            }
        }
        const __m256 inv = _mm256_set1_ps(1.0f / total);
        for (int d = 0; d < head_dim; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), inv));
    }
}

}  // namespace ember
