// The AVX2 side of decode_attention.h: the 8-float body (decode_attention_body.h over Avx2Floats), the softmax
// step every body shares, storing rows, the split count, the merge, and the choice of instruction set. Stored
// rows become floats in registers as they are read (F16C for fp16, a shift for bf16, int8 -> float for q8_0
// with the row's scale folded into its score or its softmax weight), so a compact cache costs bandwidth in
// proportion to its bytes and no extra pass.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "decode_attention.h"
#include "decode_attention_tile.h"
#include "kernel_isa.h"
#include "simd_avx2.h"
#include "vector_exp_avx2.h"

namespace ember {

namespace {

// 8 floats a register: the operations decode_attention_body.h is written in.
struct Avx2Floats {
    using Reg = __m256;
    static constexpr int kLanes = 8;
    // Registers of a pass (16 in all): 6 query heads x 2 key rows of accumulators + 2 keys + a query: 15; 6 heads x
    // 2 value chunks + 2 values + a weight: 15. A lone token's group of 3 fills half a pass, the 2 or more rows of
    // a verified draft whole ones.
    static constexpr int kScoreRows = 2;
    static constexpr int kValueChunks = 2;
    static constexpr int kQueriesPerPass = 6;

    static Reg zero() { return _mm256_setzero_ps(); }
    static Reg set1(float x) { return _mm256_set1_ps(x); }
    static Reg load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
    static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
    static float hsum(Reg v) { return hsum8(v); }
    // The sum of v's lanes in hsum4's order (pairs, then quads, then the two halves).
    static float hsum_pairwise(Reg v) {
        const __m256 pairs = _mm256_hadd_ps(v, v);
        const __m256 quads = _mm256_hadd_ps(pairs, pairs);  // [v0123 .. | v4567 ..]
        return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(quads), _mm256_extractf128_ps(quads, 1)));
    }
    // out[j] = the sum of v[j]'s lanes, j < 4.
    static void hsum4(const Reg* v, float* out) {
        const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        // abcd = [a0123 b0123 c0123 d0123 | a4567 b4567 c4567 d4567]
        _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
    }

    // 8 stored values of a row, from value index 8 * c, as floats (q8_0: unscaled; the caller applies the scale).
    template <KVDtype T>
    static Reg load_row(const uint8_t* row, int c) {
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
};

}  // namespace
}  // namespace ember

#include "decode_attention_body.h"

namespace ember {

namespace {

inline uint16_t float_to_bf16(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof(bits));
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
    bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
    return static_cast<uint16_t>(bits >> 16);
}

}  // namespace

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

void attention_tile_softmax(float* scores, int n, const float* key_scales, const float* value_scales,
                            const TileSoftmax& state) {
    for (int g = 0; g < state.group; ++g) {
        float* s = scores + g * kTile;
        __m256 maxes = _mm256_set1_ps(-INFINITY);
        int i = 0;
        for (; i + 8 <= n; i += 8) {
            const __m256 scaled = _mm256_mul_ps(_mm256_loadu_ps(s + i), _mm256_loadu_ps(key_scales + i));
            _mm256_storeu_ps(s + i, scaled);
            maxes = _mm256_max_ps(maxes, scaled);
        }
        float tile_max = hmax8(maxes);
        for (; i < n; ++i) {
            s[i] *= key_scales[i];
            tile_max = std::max(tile_max, s[i]);
        }
        const float new_max = std::max(state.max[g], tile_max);
        if (new_max > state.max[g]) {
            const float shrink = state.max[g] == -INFINITY ? 0.0f : std::exp(state.max[g] - new_max);
            state.sum[g] *= shrink;
            const __m256 factor = _mm256_set1_ps(shrink);
            float* acc = state.acc + g * state.head_dim;
            for (int d = 0; d < state.head_dim; d += 8) {
                _mm256_storeu_ps(acc + d, _mm256_mul_ps(_mm256_loadu_ps(acc + d), factor));
            }
            state.max[g] = new_max;
        }
        const __m256 shift = _mm256_set1_ps(new_max);
        // One horizontal sum per 8 weights, in this order: summing them in a register first (one horizontal sum
        // a tile) is ~5% faster but rounds the denominator differently, and that alone turned the default
        // model's greedy reply to "What is the capital of France?" from "The capital of France is Paris." to
        // French (its first token is a near tie the served int8 path decides by rounding; docs/decisions.md).
        float tile_sum = 0.0f;
        i = 0;
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

bool attention_isa_from_int(int id, int head_dim, AttentionIsa* out) {
#if defined(EMBER_HAVE_AVX512_VNNI)
    // The AVX-512 body is built with the AVX-512 VNNI file's flags, so it needs what that family needs.
    const bool avx512 = cpu_supports(Isa::Avx512Vnni) && head_dim % 16 == 0;
#else
    const bool avx512 = false;
#endif
    switch (id) {
        case 0: *out = avx512 ? AttentionIsa::kAvx512 : AttentionIsa::kAvx2; return true;
        case static_cast<int>(AttentionIsa::kAvx2): *out = AttentionIsa::kAvx2; return true;
        case static_cast<int>(AttentionIsa::kAvx512): *out = AttentionIsa::kAvx512; return avx512;
        default: return false;
    }
}

void attend_split(AttentionIsa isa, const AttentionRows& rows, const PagedKV& ctx, int group, int head_dim,
                  float scale, int split, int splits, AttentionScratch& scratch) {
#if defined(EMBER_HAVE_AVX512_VNNI)
    if (isa == AttentionIsa::kAvx512) {
        return attend_split_avx512(rows, ctx, group, head_dim, scale, split, splits, scratch);
    }
#endif
    (void)isa;
    attend_split_with<Avx2Floats>(rows, ctx, group, head_dim, scale, split, splits, scratch);
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
