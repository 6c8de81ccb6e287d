// AVX-512 VNNI kernels over the interleaved layout (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni,
// called only after a run-time CPU check). vpdpbusd multiplies unsigned bytes by signed bytes and sums each 4 into
// an int32 lane: one instruction where AVX2 needs maddubs + madd + add, and no int16 saturation to work around.
//
// One zmm holds one 32-byte tile vector twice ([vector | vector]: 4 values of the 8 rows) and the activations of
// two tokens ([token A in 8 lanes | token B in 8 lanes]), so its 16 int32 lanes are 8 rows x 2 tokens: 16
// different outputs. Each lane then takes exactly the float steps of the AVX2 kernel (kernels_avx2.cpp), in the
// same order, so both families return the same bits (the integer dots are exact in both). An earlier version put
// two tile vectors of one token in a zmm and added the halves at the end: no less accurate, but its other float
// order moved the default model's near-tie answers (docs/decisions.md, "AVX-512 VNNI returns AVX2's bits").
// A slice's odd last token goes to the AVX2 kernel itself; register tiles are 8 rows x up to 8 tokens.
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

constexpr int kMaxPairs = 4;  // token pairs per register tile: 8 tokens
constexpr int kPrefetchAhead = 2048;  // bytes ahead, as the AVX2 kernels (measured there)

template <int kTile>
inline void prefetch_ahead(const uint8_t* tile) {
    for (int line = 0; line < kTile; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(tile + kPrefetchAhead + line), _MM_HINT_T0);
    }
}

// The quantized activations of kMaxPairs token pairs: [pair][0] = token A (low lanes), [pair][1] = token B.
struct PairRows {
    const int8_t* q[kMaxPairs][2];
    const float* d[kMaxPairs][2];
    const float* s[kMaxPairs][2];
};

// vpermd tables: from [token A's 32 bytes | token B's 32 bytes] (dwords 0-7 | 8-15), activation dword v (values
// 4v .. 4v+3) of A in lanes 0-7 and of B in lanes 8-15, to meet tile vector v of the 8 rows in both halves.
struct PairIndex {
    __m512i idx[8];
    PairIndex() {
        for (int v = 0; v < 8; ++v) {
            idx[v] = _mm512_setr_epi32(v, v, v, v, v, v, v, v, 8 + v, 8 + v, 8 + v, 8 + v, 8 + v, 8 + v, 8 + v, 8 + v);
        }
    }
};

inline __m512i load_pair_block(const int8_t* a, const int8_t* b) {
    const __m256i low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a));
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}

// [*a in 8 lanes | *b in 8 lanes]: a per-token value (activation scale or sum) beside the 8 rows.
inline __m512 pair_scalar(const float* a, const float* b) {
    return _mm512_mask_broadcastss_ps(_mm512_set1_ps(*a), 0xFF00, _mm_load_ss(b));
}

// [v | v]: a per-row value for both tokens.
inline __m512 both_halves(__m256 v) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(v)), _mm256_castps_pd(v), 1));
}

// One 32-byte tile vector in both halves.
inline __m512i tile_vector_twice(const uint8_t* p) {
    return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

inline __m256 load_fp16x8(const uint8_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline __m256 load_fp32x8(const uint8_t* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }

// Per-row scale and bias of one 4-bit tile: weight = scale * nibble + bias (as the AVX2 kernel computes them).
template <QType Q>
inline void load_q4_scales(const uint8_t* tile, __m256* scale, __m256* bias) {
    if constexpr (Q == QType::Q4_K) {
        *scale = load_fp32x8(tile + 128);
        *bias = load_fp32x8(tile + 160);
    } else if constexpr (Q == QType::Q4_1) {
        *scale = load_fp16x8(tile + 128);
        *bias = load_fp16x8(tile + 144);
    } else {  // Q4_0
        *scale = load_fp16x8(tile + 128);
        *bias = _mm256_mul_ps(*scale, _mm256_set1_ps(-8.0f));
    }
}

inline void store_pair(__m512 acc, float* token_a, float* token_b) {
    _mm256_storeu_ps(token_a, _mm512_castps512_ps256(acc));
    _mm256_storeu_ps(token_b, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
}

// Q4_0, Q4_1, Q4_K: vpdpbusd reads the nibbles as they are; the bias meets the activations' sum s.
template <QType Q, int P>
void q4_pair_kernel(const uint8_t* group, int nb, const PairRows& tok, const PairIndex& index,
                    float out[][kRowsPerGroup]) {
    constexpr int kTile = tile_bytes(Q);
    const __m512i low_mask = _mm512_set1_epi8(0x0F);
    __m512 acc[P];
    for (int p = 0; p < P; ++p) acc[p] = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const uint8_t* tile = group + static_cast<size_t>(b) * kTile;
        prefetch_ahead<kTile>(tile);
        __m512i u[8];  // u[v] meets activation dword v: low nibbles of vector v, then (v >= 4) high ones of v - 4
        for (int v = 0; v < 4; ++v) {
            const __m512i raw = tile_vector_twice(tile + 32 * v);
            u[v] = _mm512_and_si512(raw, low_mask);
            u[4 + v] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_mask);
        }
        __m256 scale8, bias8;
        load_q4_scales<Q>(tile, &scale8, &bias8);
        const __m512 scale = both_halves(scale8);
        const __m512 bias = both_halves(bias8);
        for (int p = 0; p < P; ++p) {
            const __m512i x = load_pair_block(tok.q[p][0] + b * kBlock, tok.q[p][1] + b * kBlock);
            // Two chains of 4 (values 0-15, 16-31) rather than one of 8: half the latency; integer sums are exact.
            __m512i half[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
            for (int v = 0; v < 8; ++v) {
                half[v / 4] = _mm512_dpbusd_epi32(half[v / 4], u[v], _mm512_permutexvar_epi32(index.idx[v], x));
            }
            const __m512i dot = _mm512_add_epi32(half[0], half[1]);
            // The AVX2 kernel's steps: part = dot * (scale * d) + bias * s, then acc + part.
            const __m512 with_bias = _mm512_mul_ps(bias, pair_scalar(tok.s[p][0] + b, tok.s[p][1] + b));
            const __m512 dx = pair_scalar(tok.d[p][0] + b, tok.d[p][1] + b);
            const __m512 part = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(scale, dx), with_bias);
            acc[p] = _mm512_add_ps(acc[p], part);
        }
    }
    for (int p = 0; p < P; ++p) store_pair(acc[p], out[2 * p], out[2 * p + 1]);
}

// Signed 8-bit weights (Q8_0; Q6_K as q - 32): vpdpbusd reads |w| and the activation takes w's sign, so every
// integer dot is exact. (Reading w + 128 instead and subtracting 128 * the activations' sum in float saves that
// negation but cancels digits: the fused step and the module path then drifted apart by up to 1e-3.)
template <QType Q, int P>
void q8_pair_kernel(const uint8_t* group, int nb, const PairRows& tok, const PairIndex& index,
                    float out[][kRowsPerGroup]) {
    constexpr int kTile = tile_bytes(Q);
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc[P];
    for (int p = 0; p < P; ++p) acc[p] = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const uint8_t* tile = group + static_cast<size_t>(b) * kTile;
        prefetch_ahead<kTile>(tile);
        __m512i w_abs[8];
        __mmask64 negative[8];
        for (int c = 0; c < 8; ++c) {
            const __m512i w = tile_vector_twice(tile + 32 * c);  // values 4c .. 4c+3 of the 8 rows
            w_abs[c] = _mm512_abs_epi8(w);  // -128 -> 0x80, read as the unsigned 128
            negative[c] = _mm512_movepi8_mask(w);
        }
        // Q6_K: one scale per 16-value half (vectors 0-3 and 4-7); Q8_0: one for the block.
        __m512 scale_lo, scale_hi;
        if constexpr (Q == QType::Q6_K) {
            scale_lo = both_halves(load_fp32x8(tile + 256));
            scale_hi = both_halves(load_fp32x8(tile + 288));
        } else {
            scale_lo = scale_hi = both_halves(load_fp16x8(tile + 256));
        }
        for (int p = 0; p < P; ++p) {
            const __m512i x = load_pair_block(tok.q[p][0] + b * kBlock, tok.q[p][1] + b * kBlock);
            __m512i half[2] = {zero, zero};
            for (int c = 0; c < 8; ++c) {
                const __m512i xc = _mm512_permutexvar_epi32(index.idx[c], x);
                const __m512i signed_x = _mm512_mask_sub_epi8(xc, negative[c], zero, xc);
                // Values 0-15 and 16-31 in two chains: Q6_K's two scales, and half the latency for Q8_0 as well.
                half[c / 4] = _mm512_dpbusd_epi32(half[c / 4], w_abs[c], signed_x);
            }
            const __m512 dx = pair_scalar(tok.d[p][0] + b, tok.d[p][1] + b);
            // The AVX2 kernel's steps: acc = dot * (scale * d) + acc, per half for Q6_K.
            if constexpr (Q == QType::Q6_K) {
                acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(half[0]), _mm512_mul_ps(scale_lo, dx), acc[p]);
                acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(half[1]), _mm512_mul_ps(scale_hi, dx), acc[p]);
            } else {
                const __m512i dot = _mm512_add_epi32(half[0], half[1]);
                acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(scale_lo, dx), acc[p]);
            }
        }
    }
    for (int p = 0; p < P; ++p) store_pair(acc[p], out[2 * p], out[2 * p + 1]);
}

template <QType Q, int P>
void pair_kernel(const uint8_t* group, int nb, const PairRows& tok, const PairIndex& index,
                 float out[][kRowsPerGroup]) {
    if constexpr (Q == QType::Q8_0 || Q == QType::Q6_K) {
        q8_pair_kernel<Q, P>(group, nb, tok, index, out);
    } else {
        q4_pair_kernel<Q, P>(group, nb, tok, index, out);
    }
}

template <QType Q, int... Ps>
void dispatch_pairs(int pairs, const uint8_t* group, int nb, const PairRows& tok, const PairIndex& index,
                    float out[][kRowsPerGroup], std::integer_sequence<int, Ps...>) {
    // pairs is 1..kMaxPairs: exactly one P matches.
    ((pairs == Ps + 1 ? (pair_kernel<Q, Ps + 1>(group, nb, tok, index, out), 0) : 0), ...);
}

// Same walk as the AVX2 kernels: a slice's row groups outside, its tokens (kMaxPairs pairs at a time) inside;
// an odd last token runs on the AVX2 kernel for the same group, whose weights are still in L1.
template <QType Q>
void run_slice(const MatmulSlice& slice) {
    const QuantizedActs& acts = *slice.acts;
    const int nb = slice.k / kBlock;
    const size_t group_bytes = static_cast<size_t>(nb) * tile_bytes(Q);
    const PairIndex index;
    alignas(64) float out[2 * kMaxPairs][kRowsPerGroup];
    for (int g = slice.g_begin; g < slice.g_end; ++g) {
        const uint8_t* group = slice.packed + g * group_bytes;
        const int row0 = g * kRowsPerGroup;
        const int valid = std::min(kRowsPerGroup, slice.n - row0);
        int t = slice.t_begin;
        while (slice.t_end - t >= 2) {
            const int pairs = std::min(kMaxPairs, (slice.t_end - t) / 2);
            PairRows tok;
            for (int i = 0; i < 2 * pairs; ++i) {
                tok.q[i / 2][i % 2] = acts.q + static_cast<size_t>(t + i) * slice.k;
                tok.d[i / 2][i % 2] = acts.d + static_cast<size_t>(t + i) * nb;
                tok.s[i / 2][i % 2] = acts.s + static_cast<size_t>(t + i) * nb;
            }
            dispatch_pairs<Q>(pairs, group, nb, tok, index, out, std::make_integer_sequence<int, kMaxPairs>{});
            for (int i = 0; i < 2 * pairs; ++i) {
                std::memcpy(slice.y + static_cast<size_t>(t + i) * slice.ldy + row0, out[i], sizeof(float) * valid);
            }
            t += 2 * pairs;
        }
        if (t < slice.t_end) {  // one token left
            MatmulSlice last = slice;
            last.g_begin = g;
            last.g_end = g + 1;
            last.t_begin = t;
            matmul_slice_avx2(last);
        }
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
    }
}

}  // namespace ember
