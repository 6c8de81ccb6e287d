// The AVX-512 body of the decode attention: decode_attention_body.h over 16-float registers. With head_dim 64 a
// value row is 4 registers, so a pass keeps 4 heads x 4 chunks of accumulators (16 of 32 registers) and reads
// and converts each value row once; scores take 4 key rows at a time. Compiled with the AVX-512 VNNI file's
// flags and run only after the same run-time check (attention_isa_from_int).
// GCC 12's avx512fintrin.h seeds its conversions with a self-initialised "undefined" register, which it then
// reports as maybe uninitialised once inlined here: a known false positive of the header, not of this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "decode_attention.h"
#include "decode_attention_tile.h"

namespace ember {

namespace {

struct Avx512Floats {
    using Reg = __m512;
    static constexpr int kLanes = 16;
    // Registers of a pass (32 in all): 4 query heads x 4 key rows of accumulators + 4 keys + a query: 21; 4 heads x
    // 4 value chunks + 4 values + a weight: 21.
    static constexpr int kScoreRows = 4;
    static constexpr int kValueChunks = 4;
    static constexpr int kQueriesPerPass = 4;

    static Reg zero() { return _mm512_setzero_ps(); }
    static Reg set1(float x) { return _mm512_set1_ps(x); }
    static Reg load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
    static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
    // v's 16 lanes folded to 8: lane j + lane j + 8.
    static __m256 fold(Reg v) {
        return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    }
    static float hsum(Reg v) { return _mm512_reduce_add_ps(v); }
    // The sum of v's lanes in hsum4's order (folded to 8, then pairs, quads and the two halves).
    static float hsum_pairwise(Reg v) {
        const __m256 half = fold(v);
        const __m256 pairs = _mm256_hadd_ps(half, half);
        const __m256 quads = _mm256_hadd_ps(pairs, pairs);
        return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(quads), _mm256_extractf128_ps(quads, 1)));
    }
    // out[j] = the sum of v[j]'s lanes, j < 4: each folded to 8 lanes, then the AVX2 four-way sum.
    static void hsum4(const Reg* v, float* out) {
        __m256 half[4];
        for (int j = 0; j < 4; ++j) half[j] = fold(v[j]);
        const __m256 ab = _mm256_hadd_ps(half[0], half[1]);
        const __m256 cd = _mm256_hadd_ps(half[2], half[3]);
        const __m256 abcd = _mm256_hadd_ps(ab, cd);  // [a0123 b0123 c0123 d0123 | a4567 b4567 c4567 d4567]
        _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
    }

    // 16 stored values of a row, from value index 16 * c, as floats (q8_0: unscaled).
    template <KVDtype T>
    static Reg load_row(const uint8_t* row, int c) {
        if constexpr (T == KVDtype::kF32) {
            return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + 16 * c);
        } else if constexpr (T == KVDtype::kF16) {
            return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * c)));
        } else if constexpr (T == KVDtype::kBF16) {
            const __m256i halves = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * c));
            const __m512i wide = _mm512_cvtepu16_epi32(halves);
            return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
        } else {
            const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * c));
            return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
        }
    }
};

}  // namespace
}  // namespace ember

#include "decode_attention_body.h"

namespace ember {

void attend_split_avx512(const AttentionRows& rows, const PagedKV& ctx, int group, int head_dim, float scale,
                         int split, int splits, AttentionScratch& scratch) {
    attend_split_with<Avx512Floats>(rows, ctx, group, head_dim, scale, split, splits, scratch);
}

}  // namespace ember
