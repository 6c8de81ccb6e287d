// AVX-512 VNNI kernels over the interleaved layout (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni,
// called only after a run-time CPU check). vpdpbusd multiplies unsigned bytes by signed bytes and sums each 4 into
// an int32 lane: one instruction where AVX2 needs maddubs + madd + add, and no int16 saturation to work around.
//
// One zmm holds the same 32-byte tile vector of two neighbouring row groups ([group g | group g+1]: 4 values of 16
// rows), so one broadcast of 4 activation bytes feeds 16 rows and each int32 lane is one output (row, token). Each
// lane then takes exactly the float steps of the AVX2 kernel (kernels_avx2.cpp) in the same order, so both
// families return the same bits; the integer dots are exact in both. An earlier version put two tile vectors of
// one token in a zmm and added the halves at the end: no less accurate, but its other float order moved the
// default model's near-tie answers (docs/decisions.md, "AVX-512 VNNI returns AVX2's bits").
// A slice's odd last row group runs on the AVX2 kernel; register tiles are 16 rows x up to 8 tokens.
// GCC 12's own 512 -> 256-bit cast intrinsics trip -Wmaybe-uninitialized on their `__Y = __Y` placeholder.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "kernel_isa.h"
#include "quant_layout.h"

namespace ember {

namespace {

constexpr int kMaxTokens = 8;
constexpr int kRows = 2 * kRowsPerGroup;  // outputs of one zmm lane set: two row groups

// The kernels read two row groups side by side, so "2 KB ahead" of group g's tile would land in group g+1, which
// is being read already, and group g+3 would start cold. So each tile asks for the same tile of the next pair of
// row groups (2 groups further: 2 * 0.2-15 KB ahead on the default model's shapes).
template <int kTile>
inline void prefetch_next_pair(const uint8_t* tile, size_t group_bytes) {
    for (int line = 0; line < kTile; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(tile + 2 * group_bytes + line), _MM_HINT_T0);
    }
}

struct TokenRows {
    const int8_t* q[kMaxTokens];
    const float* d[kMaxTokens];
    const float* s[kMaxTokens];
};

// Activation bytes 4v .. 4v+3 of a block in every lane.
inline __m512i broadcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, sizeof(v));
    return _mm512_set1_epi32(v);
}

// [32 bytes at a | 32 bytes at b]: one tile vector of both row groups.
inline __m512i two_groups(const uint8_t* a, const uint8_t* b) {
    const __m256i low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a));
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}

// [a | b]: per-row values of both row groups.
inline __m512 two_groups(__m256 a, __m256 b) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(a)), _mm256_castps_pd(b), 1));
}

inline __m256 load_fp16x8(const uint8_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline __m256 load_fp32x8(const uint8_t* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }

// Per-row scale and bias of one 4-bit tile, as the AVX2 kernel computes them: weight = scale * nibble + bias.
template <QType Q>
inline void load_q4_scales(const uint8_t* tile, __m256* scale, __m256* bias) {
    const uint8_t* p = tile + tile_quant_bytes(Q);
    if constexpr (Q == QType::Q4_K) {
        *scale = load_fp32x8(p);
        *bias = load_fp32x8(p + 32);
    } else if constexpr (Q == QType::Q4_1 || Q == QType::Q5_1) {
        *scale = load_fp16x8(p);
        *bias = load_fp16x8(p + 16);
    } else {  // Q4_0, Q5_0: the quants are offset by 8 / 16
        *scale = load_fp16x8(p);
        *bias = _mm256_mul_ps(*scale, _mm256_set1_ps(Q == QType::Q5_0 ? -16.0f : -8.0f));
    }
}

// Q4_0, Q4_1, Q4_K (and Q5_0, Q5_1 with the fifth bit ORed in at bit 4): vpdpbusd reads the quants as they are
// (0..31 times int8 summed in int32: no overflow); the bias meets the activations' sum s.
template <QType Q, int T>
void q4_kernel(const uint8_t* group_a, const uint8_t* group_b, int nb, const TokenRows& tok, float out[][kRows]) {
    constexpr int kTile = tile_bytes(Q);
    const __m512i low_mask = _mm512_set1_epi8(0x0F);
    const size_t group_bytes = static_cast<size_t>(group_b - group_a);
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const uint8_t* tile_a = group_a + static_cast<size_t>(b) * kTile;
        const uint8_t* tile_b = group_b + static_cast<size_t>(b) * kTile;
        prefetch_next_pair<kTile>(tile_a, group_bytes);
        prefetch_next_pair<kTile>(tile_b, group_bytes);
        __m512i u[8];  // u[v] meets activation bytes 4v..4v+3: low nibbles of vector v, then high ones of v - 4
        for (int v = 0; v < 4; ++v) {
            const __m512i raw = two_groups(tile_a + 32 * v, tile_b + 32 * v);
            u[v] = _mm512_and_si512(raw, low_mask);
            u[4 + v] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_mask);
        }
        if constexpr (is_five_bit(Q)) {
            // Bit v of a plane byte is value 4v+j's fifth bit, bit 4+v value 16+4v+j's: shifted to bit 4 and ORed
            // in with one ternary op each (0xF8: a | (b & c)); the shifts cross bytes only into bits c clears.
            const __m512i bit4 = _mm512_set1_epi8(0x10);
            const __m512i plane = two_groups(tile_a + kNibbleBytes, tile_b + kNibbleBytes);
            for (int v = 0; v < 4; ++v) {
                u[v] = _mm512_ternarylogic_epi32(u[v], _mm512_slli_epi16(plane, 4 - v), bit4, 0xF8);
                u[4 + v] = _mm512_ternarylogic_epi32(u[4 + v], _mm512_srli_epi16(plane, v), bit4, 0xF8);
            }
        }
        __m256 scale_a, bias_a, scale_b, bias_b;
        load_q4_scales<Q>(tile_a, &scale_a, &bias_a);
        load_q4_scales<Q>(tile_b, &scale_b, &bias_b);
        const __m512 scale = two_groups(scale_a, scale_b);
        const __m512 bias = two_groups(bias_a, bias_b);
        for (int t = 0; t < T; ++t) {
            const int8_t* xb = tok.q[t] + b * kBlock;
            // Four chains of 2 rather than one of 8: a quarter of the latency; integer sums are exact.
            __m512i chain[4];
            for (int v = 0; v < 4; ++v) {
                chain[v] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[v], broadcast4(xb + 4 * v));
                chain[v] = _mm512_dpbusd_epi32(chain[v], u[4 + v], broadcast4(xb + 16 + 4 * v));
            }
            const __m512i dot =
                _mm512_add_epi32(_mm512_add_epi32(chain[0], chain[1]), _mm512_add_epi32(chain[2], chain[3]));
            // The AVX2 kernel's steps: part = dot * (scale * d) + bias * s, then acc + part.
            const __m512 with_bias = _mm512_mul_ps(bias, _mm512_set1_ps(tok.s[t][b]));
            const __m512 part =
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(scale, _mm512_set1_ps(tok.d[t][b])), with_bias);
            acc[t] = _mm512_add_ps(acc[t], part);
        }
    }
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(out[t], acc[t]);
}

// Signed 8-bit weights (Q8_0; Q6_K as q - 32): vpdpbusd reads |w| and the activation takes w's sign, so every
// integer dot is exact. (Reading w + 128 instead and subtracting 128 * the activations' sum in float saves that
// negation but cancels digits: the fused step and the module path then drifted apart by up to 1e-3.)
template <QType Q, int T>
void q8_kernel(const uint8_t* group_a, const uint8_t* group_b, int nb, const TokenRows& tok, float out[][kRows]) {
    constexpr int kTile = tile_bytes(Q);
    const __m512i zero = _mm512_setzero_si512();
    const size_t group_bytes = static_cast<size_t>(group_b - group_a);
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const uint8_t* tile_a = group_a + static_cast<size_t>(b) * kTile;
        const uint8_t* tile_b = group_b + static_cast<size_t>(b) * kTile;
        prefetch_next_pair<kTile>(tile_a, group_bytes);
        prefetch_next_pair<kTile>(tile_b, group_bytes);
        __m512i w_abs[8];
        __mmask64 negative[8];
        for (int c = 0; c < 8; ++c) {
            const __m512i w = two_groups(tile_a + 32 * c, tile_b + 32 * c);  // values 4c .. 4c+3 of the 16 rows
            w_abs[c] = _mm512_abs_epi8(w);  // -128 -> 0x80, read as the unsigned 128
            negative[c] = _mm512_movepi8_mask(w);
        }
        // Q6_K: one scale per 16-value half (vectors 0-3 and 4-7); Q8_0: one for the block.
        __m512 scale_lo, scale_hi;
        if constexpr (Q == QType::Q6_K) {
            scale_lo = two_groups(load_fp32x8(tile_a + 256), load_fp32x8(tile_b + 256));
            scale_hi = two_groups(load_fp32x8(tile_a + 288), load_fp32x8(tile_b + 288));
        } else {
            scale_lo = scale_hi = two_groups(load_fp16x8(tile_a + 256), load_fp16x8(tile_b + 256));
        }
        for (int t = 0; t < T; ++t) {
            const int8_t* xb = tok.q[t] + b * kBlock;
            __m512i half[2] = {zero, zero};
            for (int c = 0; c < 8; ++c) {
                const __m512i x = broadcast4(xb + 4 * c);
                const __m512i signed_x = _mm512_mask_sub_epi8(x, negative[c], zero, x);
                // Values 0-15 and 16-31 in two chains: Q6_K's two scales, and half the latency for Q8_0 as well.
                half[c / 4] = _mm512_dpbusd_epi32(half[c / 4], w_abs[c], signed_x);
            }
            const __m512 dx = _mm512_set1_ps(tok.d[t][b]);
            // The AVX2 kernel's steps: acc = dot * (scale * d) + acc, per half for Q6_K.
            if constexpr (Q == QType::Q6_K) {
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(half[0]), _mm512_mul_ps(scale_lo, dx), acc[t]);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(half[1]), _mm512_mul_ps(scale_hi, dx), acc[t]);
            } else {
                const __m512i dot = _mm512_add_epi32(half[0], half[1]);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(scale_lo, dx), acc[t]);
            }
        }
    }
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(out[t], acc[t]);
}

template <QType Q, int T>
void group_pair_kernel(const uint8_t* group_a, const uint8_t* group_b, int nb, const TokenRows& tok,
                       float out[][kRows]) {
    if constexpr (Q == QType::Q8_0 || Q == QType::Q6_K) {
        q8_kernel<Q, T>(group_a, group_b, nb, tok, out);
    } else {
        q4_kernel<Q, T>(group_a, group_b, nb, tok, out);
    }
}

template <QType Q, int... Ts>
void dispatch_tokens(int count, const uint8_t* group_a, const uint8_t* group_b, int nb, const TokenRows& tok,
                     float out[][kRows], std::integer_sequence<int, Ts...>) {
    // count is 1..kMaxTokens: exactly one T matches.
    ((count == Ts + 1 ? (group_pair_kernel<Q, Ts + 1>(group_a, group_b, nb, tok, out), 0) : 0), ...);
}

// Same walk as the AVX2 kernels, two row groups at a time: a slice's row groups outside, its tokens (kMaxTokens
// at a time) inside. An odd last row group runs on the AVX2 kernel (plan_work hands out even group counts).
template <QType Q>
void run_slice(const MatmulSlice& slice) {
    const QuantizedActs& acts = *slice.acts;
    const int nb = slice.k / kBlock;
    const size_t group_bytes = static_cast<size_t>(nb) * tile_bytes(Q);
    alignas(64) float out[kMaxTokens][kRows];
    int g = slice.g_begin;
    for (; slice.g_end - g >= 2; g += 2) {
        const uint8_t* group_a = slice.packed + g * group_bytes;
        const int row0 = g * kRowsPerGroup;
        const int valid = std::min(kRows, slice.n - row0);  // rows past n are zero in the tiles, never stored
        for (int t = slice.t_begin; t < slice.t_end; t += kMaxTokens) {
            const int count = std::min(kMaxTokens, slice.t_end - t);
            TokenRows tok;
            for (int i = 0; i < count; ++i) {
                tok.q[i] = acts.q + static_cast<size_t>(t + i) * slice.k;
                tok.d[i] = acts.d + static_cast<size_t>(t + i) * nb;
                tok.s[i] = acts.s + static_cast<size_t>(t + i) * nb;
            }
            dispatch_tokens<Q>(count, group_a, group_a + group_bytes, nb, tok, out,
                               std::make_integer_sequence<int, kMaxTokens>{});
            for (int i = 0; i < count; ++i) {
                std::memcpy(slice.y + static_cast<size_t>(t + i) * slice.ldy + row0, out[i], sizeof(float) * valid);
            }
        }
    }
    if (g < slice.g_end) {  // one row group left
        MatmulSlice last = slice;
        last.g_begin = g;
        matmul_slice_avx2(last);
    }
}

}  // namespace

void matmul_slice_avx512_vnni(const MatmulSlice& slice) {
    switch (slice.qtype) {
        case QType::Q8_0: run_slice<QType::Q8_0>(slice); break;
        case QType::Q4_0: run_slice<QType::Q4_0>(slice); break;
        case QType::Q4_1: run_slice<QType::Q4_1>(slice); break;
        case QType::Q4_K: run_slice<QType::Q4_K>(slice); break;
        case QType::Q6_K: run_slice<QType::Q6_K>(slice); break;
        case QType::Q5_0: run_slice<QType::Q5_0>(slice); break;
        case QType::Q5_1: run_slice<QType::Q5_1>(slice); break;
    }
}

}  // namespace ember
