// AVX-512 VNNI kernels over the interleaved layout (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni,
// called only after a run-time CPU check). vpdpbusd multiplies unsigned bytes by signed bytes and sums each 4 into
// an int32 lane: one instruction where AVX2 needs maddubs + madd + add, and no int16 saturation to work around.
//
// One zmm holds two consecutive 32-byte tile vectors (vectors 2p and 2p+1, each 4 values of the 8 rows), so its 16
// int32 lanes are [8 rows of vector 2p | 8 rows of vector 2p+1]; the two halves are added when a row group is done.
// The activations a pair needs, 4 bytes per half, come from one vpermd of the block's 32 bytes.
// Register tiles are 8 rows x up to 8 tokens (32 zmm registers, twice AVX2's 16).
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
constexpr int kPrefetchAhead = 2048;  // bytes ahead, as the AVX2 kernels (measured there)

template <int kTile>
inline void prefetch_ahead(const uint8_t* tile) {
    for (int line = 0; line < kTile; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(tile + kPrefetchAhead + line), _MM_HINT_T0);
    }
}

struct TokenRows {
    const int8_t* q[kMaxTokens];
    const float* d[kMaxTokens];
    const float* s[kMaxTokens];
};

// The 4 activation vectors of one 32-value block: pair j (j = 0..3) = [dword 2j in 8 lanes | dword 2j+1 in 8].
struct BlockActs {
    __m512i pair[4];
};

struct PairIndex {
    __m512i idx[4];
    PairIndex() {
        for (int j = 0; j < 4; ++j) {
            idx[j] = _mm512_setr_epi32(2 * j, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j + 1, 2 * j + 1,
                                       2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1);
        }
    }
};

inline BlockActs spread_block(const PairIndex& index, const int8_t* xb) {
    const __m512i x = _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb)));
    BlockActs a;
    for (int j = 0; j < 4; ++j) a.pair[j] = _mm512_permutexvar_epi32(index.idx[j], x);
    return a;
}

// [v | v]: a per-row value for both halves of a zmm.
inline __m512 both_halves(__m256 v) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(v)), _mm256_castps_pd(v), 1));
}

// [v | 0]: a per-row term that must be counted once, not once per half.
inline __m512 low_half(__m256 v) { return _mm512_zextps256_ps512(v); }

inline __m256 fold_halves(__m512 v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

inline __m256 load_fp16x8(const uint8_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline __m256 load_fp32x8(const uint8_t* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }

// Per-row scale and bias of one 4-bit tile: weight = scale * nibble + bias.
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

// Q4_0, Q4_1, Q4_K: vpdpbusd reads the nibbles as they are; the bias meets the activations' sum s.
template <QType Q, int T>
void q4_group_kernel(const uint8_t* group, int nb, const TokenRows& tok, const PairIndex& index,
                     float out[][kRowsPerGroup]) {
    constexpr int kTile = tile_bytes(Q);
    const __m512i low_mask = _mm512_set1_epi8(0x0F);
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const uint8_t* tile = group + static_cast<size_t>(b) * kTile;
        prefetch_ahead<kTile>(tile);
        __m512i u[4];  // u[j] multiplies activation pair j
        for (int p = 0; p < 2; ++p) {
            const __m512i raw = _mm512_loadu_si512(tile + 64 * p);                 // vectors 2p, 2p+1
            u[p] = _mm512_and_si512(raw, low_mask);                                 // values 8p .. 8p+7
            u[2 + p] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_mask);      // values 16+8p ..
        }
        __m256 scale8, bias8;
        load_q4_scales<Q>(tile, &scale8, &bias8);
        const __m512 scale = both_halves(scale8);
        const __m512 bias = low_half(bias8);
        for (int t = 0; t < T; ++t) {
            const BlockActs x = spread_block(index, tok.q[t] + b * kBlock);
            __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[0], x.pair[0]);
            for (int j = 1; j < 4; ++j) dot = _mm512_dpbusd_epi32(dot, u[j], x.pair[j]);
            const __m512 with_bias = _mm512_fmadd_ps(bias, _mm512_set1_ps(tok.s[t][b]), acc[t]);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(scale, _mm512_set1_ps(tok.d[t][b])),
                                     with_bias);
        }
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(out[t], fold_halves(acc[t]));
}

// Signed 8-bit weights (Q8_0; Q6_K as q - 32): vpdpbusd reads |w| and the activation takes w's sign, so every
// integer dot is exact. (Reading w + 128 instead and subtracting 128 * the activations' sum in float saves that
// negation but cancels digits: the fused step and the module path then drifted apart by up to 1e-3.)
template <QType Q, int T>
void q8_group_kernel(const uint8_t* group, int nb, const TokenRows& tok, const PairIndex& index,
                     float out[][kRowsPerGroup]) {
    constexpr int kTile = tile_bytes(Q);
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const uint8_t* tile = group + static_cast<size_t>(b) * kTile;
        prefetch_ahead<kTile>(tile);
        __m512i w_abs[4];
        __mmask64 negative[4];
        for (int p = 0; p < 4; ++p) {
            const __m512i w = _mm512_loadu_si512(tile + 64 * p);  // vectors 2p, 2p+1: activation pair p
            w_abs[p] = _mm512_abs_epi8(w);  // -128 -> 0x80, read as the unsigned 128
            negative[p] = _mm512_movepi8_mask(w);
        }
        // Q6_K: one scale per 16-value half (pairs 0, 1 and pairs 2, 3); Q8_0: one for the block.
        __m512 scale_lo, scale_hi;
        if constexpr (Q == QType::Q6_K) {
            scale_lo = both_halves(load_fp32x8(tile + 256));
            scale_hi = both_halves(load_fp32x8(tile + 288));
        } else {
            scale_lo = scale_hi = both_halves(load_fp16x8(tile + 256));
        }
        for (int t = 0; t < T; ++t) {
            const BlockActs x = spread_block(index, tok.q[t] + b * kBlock);
            __m512i signed_x[4];
            for (int p = 0; p < 4; ++p) signed_x[p] = _mm512_mask_sub_epi8(x.pair[p], negative[p], zero, x.pair[p]);
            __m512i lo = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, w_abs[0], signed_x[0]), w_abs[1], signed_x[1]);
            const __m512 dx = _mm512_set1_ps(tok.d[t][b]);
            if constexpr (Q == QType::Q6_K) {
                const __m512i hi =
                    _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, w_abs[2], signed_x[2]), w_abs[3], signed_x[3]);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), _mm512_mul_ps(scale_lo, dx), acc[t]);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_mul_ps(scale_hi, dx), acc[t]);
            } else {
                lo = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(lo, w_abs[2], signed_x[2]), w_abs[3], signed_x[3]);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), _mm512_mul_ps(scale_lo, dx), acc[t]);
            }
        }
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(out[t], fold_halves(acc[t]));
}

template <QType Q, int T>
void group_kernel(const uint8_t* group, int nb, const TokenRows& tok, const PairIndex& index,
                  float out[][kRowsPerGroup]) {
    if constexpr (Q == QType::Q8_0 || Q == QType::Q6_K) {
        q8_group_kernel<Q, T>(group, nb, tok, index, out);
    } else {
        q4_group_kernel<Q, T>(group, nb, tok, index, out);
    }
}

template <QType Q, int... Ts>
void dispatch_tokens(int count, const uint8_t* group, int nb, const TokenRows& tok, const PairIndex& index,
                     float out[][kRowsPerGroup], std::integer_sequence<int, Ts...>) {
    // count is 1..kMaxTokens: exactly one T matches.
    ((count == Ts + 1 ? (group_kernel<Q, Ts + 1>(group, nb, tok, index, out), 0) : 0), ...);
}

// Same walk as the AVX2 kernels: a slice's row groups outside, its tokens (kMaxTokens at a time) inside.
template <QType Q>
void run_slice(const MatmulSlice& slice) {
    const QuantizedActs& acts = *slice.acts;
    const int nb = slice.k / kBlock;
    const size_t group_bytes = static_cast<size_t>(nb) * tile_bytes(Q);
    const PairIndex index;
    alignas(64) float out[kMaxTokens][kRowsPerGroup];
    for (int g = slice.g_begin; g < slice.g_end; ++g) {
        const uint8_t* group = slice.packed + g * group_bytes;
        const int row0 = g * kRowsPerGroup;
        const int valid = std::min(kRowsPerGroup, slice.n - row0);
        for (int t = slice.t_begin; t < slice.t_end; t += kMaxTokens) {
            const int count = std::min(kMaxTokens, slice.t_end - t);
            TokenRows tok;
            for (int i = 0; i < count; ++i) {
                tok.q[i] = acts.q + static_cast<size_t>(t + i) * slice.k;
                tok.d[i] = acts.d + static_cast<size_t>(t + i) * nb;
                tok.s[i] = acts.s + static_cast<size_t>(t + i) * nb;
            }
            dispatch_tokens<Q>(count, group, nb, tok, index, out, std::make_integer_sequence<int, kMaxTokens>{});
            for (int i = 0; i < count; ++i) {
                std::memcpy(slice.y + static_cast<size_t>(t + i) * slice.ldy + row0, out[i], sizeof(float) * valid);
            }
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
