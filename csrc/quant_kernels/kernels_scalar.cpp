// Portable kernels over the interleaved layout: the fallback on CPUs without AVX2, and the plain-loop
// statement of what the SIMD kernels compute, down to the order of their float steps (the same bits).
#include <cmath>
#include <cstring>

#include "quant_layout.h"

namespace ember {

namespace {

// One row of one tile in plain numbers: weight = scale[half] * q + bias.
struct TileRow {
    int q[kBlock];
    float scale[2];
    float bias;
};

float load_f32(const uint8_t* p) {
    float v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

float load_f16(const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, sizeof(v));
    return fp16_to_fp32(v);
}

void read_tile_row(QType qtype, const uint8_t* tile, int i, TileRow* out) {
    out->bias = 0.0f;
    if (is_four_bit(qtype)) {
        for (int v = 0; v < 4; ++v) {
            for (int j = 0; j < 4; ++j) {
                const uint8_t byte = tile[v * 32 + i * 4 + j];
                out->q[4 * v + j] = byte & 0xF;
                out->q[16 + 4 * v + j] = byte >> 4;
                if (is_five_bit(qtype)) {
                    const uint8_t fifth = tile[kNibbleBytes + i * 4 + j];
                    out->q[4 * v + j] |= ((fifth >> v) & 1) << 4;
                    out->q[16 + 4 * v + j] |= ((fifth >> (4 + v)) & 1) << 4;
                }
            }
        }
        const uint8_t* scales = tile + tile_quant_bytes(qtype);
        if (qtype == QType::Q4_K) {
            out->scale[0] = load_f32(scales + 4 * i);
            out->bias = load_f32(scales + 32 + 4 * i);
        } else if (qtype == QType::Q4_1 || qtype == QType::Q5_1) {
            out->scale[0] = load_f16(scales + 2 * i);
            out->bias = load_f16(scales + 16 + 2 * i);
        } else {  // Q4_0, Q5_0: the quants are offset by 8 / 16
            out->scale[0] = load_f16(scales + 2 * i);
            out->bias = (qtype == QType::Q5_0 ? -16.0f : -8.0f) * out->scale[0];
        }
        out->scale[1] = out->scale[0];
        return;
    }
    for (int c = 0; c < 8; ++c) {
        for (int j = 0; j < 4; ++j) out->q[4 * c + j] = static_cast<int8_t>(tile[c * 32 + i * 4 + j]);
    }
    const uint8_t* scales = tile + 256;
    if (qtype == QType::Q8_0) {
        out->scale[0] = out->scale[1] = load_f16(scales + 2 * i);
    } else {
        out->scale[0] = load_f32(scales + 4 * i);
        out->scale[1] = load_f32(scales + 32 + 4 * i);
    }
}

}  // namespace

void quantize_rows_scalar(const float* x, int t_begin, int t_end, const QuantizedActs& acts) {
    const int nb = acts.k / kBlock;
    for (int t = t_begin; t < t_end; ++t) {
        for (int b = 0; b < nb; ++b) {
            const float* xb = x + static_cast<size_t>(t) * acts.k + b * kBlock;
            int8_t* qb = acts.q + static_cast<size_t>(t) * acts.k + b * kBlock;
            float amax = 0.0f;
            for (int j = 0; j < kBlock; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
            const float d = amax / 127.0f;
            const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
            int sum = 0;
            for (int j = 0; j < kBlock; ++j) {
                // nearbyint in the default rounding mode = round half to even, like _mm256_round_ps.
                const int q = static_cast<int>(std::nearbyint(xb[j] * inv));
                qb[j] = static_cast<int8_t>(q);
                sum += q;
            }
            acts.d[static_cast<size_t>(t) * nb + b] = d;
            acts.s[static_cast<size_t>(t) * nb + b] = d * static_cast<float>(sum);
        }
    }
}

void matmul_slice_scalar(const MatmulSlice& slice) {
    const QuantizedActs& acts = *slice.acts;
    const int nb = slice.k / kBlock;
    const int tb = tile_bytes(slice.qtype);
    TileRow row;
    for (int g = slice.g_begin; g < slice.g_end; ++g) {
        const int valid = (slice.n - g * kRowsPerGroup) < kRowsPerGroup ? slice.n - g * kRowsPerGroup
                                                                         : kRowsPerGroup;
        for (int i = 0; i < valid; ++i) {
            for (int t = slice.t_begin; t < slice.t_end; ++t) {
                const int8_t* qx = acts.q + static_cast<size_t>(t) * slice.k;
                float acc = 0.0f;
                for (int b = 0; b < nb; ++b) {
                    read_tile_row(slice.qtype, slice.packed + (static_cast<size_t>(g) * nb + b) * tb, i, &row);
                    int dot[2] = {0, 0};
                    for (int j = 0; j < kBlock; ++j) dot[j / 16] += row.q[j] * qx[b * kBlock + j];
                    const float dx = acts.d[static_cast<size_t>(t) * nb + b];
                    // The SIMD kernels' float steps, in their order, so every family returns the same bits.
                    if (is_four_bit(slice.qtype)) {
                        const float with_bias = row.bias * acts.s[static_cast<size_t>(t) * nb + b];
                        acc += std::fma(static_cast<float>(dot[0] + dot[1]), row.scale[0] * dx, with_bias);
                    } else if (slice.qtype == QType::Q8_0) {
                        acc = std::fma(static_cast<float>(dot[0] + dot[1]), row.scale[0] * dx, acc);
                    } else {  // Q6_K: one scale per 16-value half
                        acc = std::fma(static_cast<float>(dot[0]), row.scale[0] * dx, acc);
                        acc = std::fma(static_cast<float>(dot[1]), row.scale[1] * dx, acc);
                    }
                }
                slice.y[static_cast<size_t>(t) * slice.ldy + g * kRowsPerGroup + i] = acc;
            }
        }
    }
}

}  // namespace ember
