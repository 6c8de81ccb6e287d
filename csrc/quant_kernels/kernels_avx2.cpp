// AVX2 + FMA + F16C kernels over the interleaved layout (compiled with -mavx2 -mfma -mf16c, called only
// after a run-time CPU check). Register tiles are 8 output rows x up to 4 tokens: the weights of a tile
// are unpacked once and used by every token, each activation broadcast is used by 8 rows.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "quant_layout.h"
#include "simd_avx2.h"

namespace ember {

namespace {

constexpr int kMaxTokens = 4;
constexpr int kPrefetchAhead = 2048;  // bytes, about 12 tiles

// One-token decode streams weights from DRAM; asking for the tile ~2 KB ahead measured ~15% faster
// per thread than the hardware prefetcher alone (1 KB: less, 4 KB: no better).
template <int kTile>
inline void prefetch_ahead(const uint8_t* tile) {
    for (int line = 0; line < kTile; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(tile + kPrefetchAhead + line), _MM_HINT_T0);
    }
}

inline __m256i broadcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, sizeof(v));
    return _mm256_set1_epi32(v);
}

// Per-row scale and bias of one 4-bit tile: weight = scale * nibble + bias.
template <QType Q>
inline void load_q4_scales(const uint8_t* p, __m256* scale, __m256* bias) {
    if constexpr (Q == QType::Q4_K) {
        *scale = _mm256_loadu_ps(reinterpret_cast<const float*>(p));
        *bias = _mm256_loadu_ps(reinterpret_cast<const float*>(p + 32));
    } else {
        *scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        if constexpr (Q == QType::Q4_1 || Q == QType::Q5_1) {
            *bias = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
        } else {  // Q4_0, Q5_0: the quants are offset by 8 / 16
            *bias = _mm256_mul_ps(*scale, _mm256_set1_ps(Q == QType::Q5_0 ? -16.0f : -8.0f));
        }
    }
}

struct TokenRows {
    const int8_t* q[kMaxTokens];  // quantized activation row of each token
    const float* d[kMaxTokens];
    const float* s[kMaxTokens];
};

// out[t][i] = sum over blocks of (8 rows x token t) for one row group. The 5-bit formats take the same path with
// each nibble's fifth bit ORed in at bit 4 from the tile's bit plane (quant_layout.h).
template <QType Q, int T>
void q4_group_kernel(const uint8_t* group, int nb, const TokenRows& tok, float out[][kRowsPerGroup]) {
    constexpr int kTile = tile_bytes(Q);
    constexpr bool kFive = is_five_bit(Q);
    const __m256i low_mask = _mm256_set1_epi8(0x0F);
    const __m256i bit4 = _mm256_set1_epi8(0x10);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const uint8_t* tile = group + static_cast<size_t>(b) * kTile;
        prefetch_ahead<kTile>(tile);
        // 8 maddubs per block, each lane at most 2 * 15 * 127: the int16 sum cannot overflow. With 5-bit quants a
        // lane reaches 2 * 31 * 127, so the int16 sum goes to int32 after every 4 maddubs (at most 31496).
        __m256i acc16[T];
        __m256i acc32[T];
        for (int t = 0; t < T; ++t) acc16[t] = acc32[t] = _mm256_setzero_si256();
        __m256i plane = _mm256_setzero_si256();
        if constexpr (kFive) plane = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + kNibbleBytes));
        // Kept a loop: unrolled, GCC hoists all 32 maddubs of four tokens and spills them to the stack, which
        // made the four-token tile (batched decode, speculative verification, prefill) ~20% slower.
#pragma GCC unroll 1
        for (int v = 0; v < 4; ++v) {
            const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + 32 * v));
            __m256i lo = _mm256_and_si256(raw, low_mask);                         // values 4v..4v+3
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low_mask);  // values 16+4v..
            if constexpr (kFive) {
                // Bit v of a plane byte -> bit 4 (the shifts cross bytes only into bits the mask clears).
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(plane, 4 - v), bit4));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_srli_epi16(plane, v), bit4));
            }
            for (int t = 0; t < T; ++t) {
                const int8_t* xb = tok.q[t] + b * kBlock;
                acc16[t] = _mm256_add_epi16(acc16[t], _mm256_maddubs_epi16(lo, broadcast4(xb + 4 * v)));
                acc16[t] = _mm256_add_epi16(acc16[t], _mm256_maddubs_epi16(hi, broadcast4(xb + 16 + 4 * v)));
            }
            if constexpr (kFive) {
                if (v == 1) {
                    for (int t = 0; t < T; ++t) {
                        acc32[t] = _mm256_madd_epi16(acc16[t], ones);
                        acc16[t] = _mm256_setzero_si256();
                    }
                }
            }
        }
        __m256 scale;
        __m256 bias;
        load_q4_scales<Q>(tile + tile_quant_bytes(Q), &scale, &bias);
        for (int t = 0; t < T; ++t) {
            __m256i dot32 = _mm256_madd_epi16(acc16[t], ones);
            if constexpr (kFive) dot32 = _mm256_add_epi32(dot32, acc32[t]);
            const __m256 dot = _mm256_cvtepi32_ps(dot32);  // [8 rows]
            const __m256 with_bias = _mm256_mul_ps(bias, _mm256_set1_ps(tok.s[t][b]));
            const __m256 part = _mm256_fmadd_ps(dot, _mm256_mul_ps(scale, _mm256_set1_ps(tok.d[t][b])), with_bias);
            acc[t] = _mm256_add_ps(acc[t], part);
        }
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(out[t], acc[t]);
}

// Signed 8-bit weights (Q8_0; Q6_K as q - 32). maddubs needs an unsigned operand, so it multiplies |w| by
// x carrying w's sign. Q8_0 lanes reach 2 * 128 * 127 and go to int32 at once; Q6_K lanes (|w| <= 32)
// sum over a 16-value half in int16, the span of one Q6_K scale.
template <QType Q, int T>
void q8_group_kernel(const uint8_t* group, int nb, const TokenRows& tok, float out[][kRowsPerGroup]) {
    constexpr int kTile = tile_bytes(Q);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const uint8_t* tile = group + static_cast<size_t>(b) * kTile;
        prefetch_ahead<kTile>(tile);
        __m256i acc32[T];
        for (int t = 0; t < T; ++t) acc32[t] = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
            __m256i acc16[T];
            for (int t = 0; t < T; ++t) acc16[t] = _mm256_setzero_si256();
            for (int c = 4 * h; c < 4 * h + 4; ++c) {
                const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + 32 * c));
                const __m256i w_abs = _mm256_abs_epi8(w);
                for (int t = 0; t < T; ++t) {
                    const __m256i x = _mm256_sign_epi8(broadcast4(tok.q[t] + b * kBlock + 4 * c), w);
                    const __m256i prod = _mm256_maddubs_epi16(w_abs, x);
                    if constexpr (Q == QType::Q8_0) {
                        acc32[t] = _mm256_add_epi32(acc32[t], _mm256_madd_epi16(prod, ones));
                    } else {
                        acc16[t] = _mm256_add_epi16(acc16[t], prod);
                    }
                }
            }
            if constexpr (Q == QType::Q6_K) {
                const __m256 scale = _mm256_loadu_ps(reinterpret_cast<const float*>(tile + 256 + 32 * h));
                for (int t = 0; t < T; ++t) {
                    const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(acc16[t], ones));
                    acc[t] = _mm256_fmadd_ps(dot, _mm256_mul_ps(scale, _mm256_set1_ps(tok.d[t][b])), acc[t]);
                }
            }
        }
        if constexpr (Q == QType::Q8_0) {
            const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tile + 256)));
            for (int t = 0; t < T; ++t) {
                const __m256 dot = _mm256_cvtepi32_ps(acc32[t]);
                acc[t] = _mm256_fmadd_ps(dot, _mm256_mul_ps(scale, _mm256_set1_ps(tok.d[t][b])), acc[t]);
            }
        }
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(out[t], acc[t]);
}

template <QType Q, int T>
void group_kernel(const uint8_t* group, int nb, const TokenRows& tok, float out[][kRowsPerGroup]) {
    if constexpr (Q == QType::Q8_0 || Q == QType::Q6_K) {
        q8_group_kernel<Q, T>(group, nb, tok, out);
    } else {
        q4_group_kernel<Q, T>(group, nb, tok, out);
    }
}

// A slice covers a few KB of weights per row group and a token block whose activations fit in L2
// (module.cpp sizes them), so each group's weights are read from memory once and reused from L1.
template <QType Q>
void run_slice(const MatmulSlice& slice) {
    const QuantizedActs& acts = *slice.acts;
    const int nb = slice.k / kBlock;
    const size_t group_bytes = static_cast<size_t>(nb) * tile_bytes(Q);
    alignas(32) float out[kMaxTokens][kRowsPerGroup];
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
            switch (count) {
                case 4: group_kernel<Q, 4>(group, nb, tok, out); break;
                case 3: group_kernel<Q, 3>(group, nb, tok, out); break;
                case 2: group_kernel<Q, 2>(group, nb, tok, out); break;
                default: group_kernel<Q, 1>(group, nb, tok, out); break;
            }
            for (int i = 0; i < count; ++i) {
                std::memcpy(slice.y + static_cast<size_t>(t + i) * slice.ldy + row0, out[i], sizeof(float) * valid);
            }
        }
    }
}

}  // namespace

void quantize_rows_avx2(const float* x, int t_begin, int t_end, const QuantizedActs& acts) {
    const int nb = acts.k / kBlock;
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the packs' lane interleave
    for (int t = t_begin; t < t_end; ++t) {
        for (int b = 0; b < nb; ++b) {
            const float* xb = x + static_cast<size_t>(t) * acts.k + b * kBlock;
            __m256 v[4];
            for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
            __m256 amax_v = _mm256_andnot_ps(sign_bit, v[0]);
            for (int i = 1; i < 4; ++i) amax_v = _mm256_max_ps(amax_v, _mm256_andnot_ps(sign_bit, v[i]));
            const float amax = hmax8(amax_v);
            const float d = amax / 127.0f;
            const __m256 inv = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
            __m256i q[4];
            for (int i = 0; i < 4; ++i) {
                q[i] = _mm256_cvtps_epi32(
                    _mm256_round_ps(_mm256_mul_ps(v[i], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            }
            const int sum = hsum8(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
            const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(acts.q + static_cast<size_t>(t) * acts.k + b * kBlock),
                                _mm256_permutevar8x32_epi32(packed, order));
            acts.d[static_cast<size_t>(t) * nb + b] = d;
            acts.s[static_cast<size_t>(t) * nb + b] = d * static_cast<float>(sum);
        }
    }
}

void matmul_slice_avx2(const MatmulSlice& slice) {
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
