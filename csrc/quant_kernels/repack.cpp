// GGUF block decoding into the interleaved layout described in quant_layout.h. Runs once per weight.
#include <cstring>

#include "quant_layout.h"

namespace ember {

namespace {

uint16_t load_u16(const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

// One row's 32-value block b in the kernels' terms: integer quants (nibbles 0..15 for the 4-bit
// formats, signed values for the 8-bit ones) and what multiplies them.
struct DecodedBlock {
    int8_t q[kBlock];
    uint16_t d_half;   // Q8_0, Q4_0, Q4_1
    uint16_t m_half;   // Q4_1
    float scale[2];    // Q4_K: [0]; Q6_K: one per 16-value half
    float bias;        // Q4_K
};

// Q4_K packs eight 6-bit scales and mins into 12 bytes (ggml's get_scale_min_k4).
void q4k_scale_min(int j, const uint8_t* s, int* sc, int* m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

void decode_block(QType qtype, const uint8_t* row, int b, DecodedBlock* out) {
    switch (qtype) {
        case QType::Q8_0: {
            const uint8_t* blk = row + static_cast<size_t>(b) * 34;
            out->d_half = load_u16(blk);
            std::memcpy(out->q, blk + 2, kBlock);
            return;
        }
        case QType::Q4_0:
        case QType::Q4_1: {
            const bool has_min = qtype == QType::Q4_1;
            const uint8_t* blk = row + static_cast<size_t>(b) * (has_min ? 20 : 18);
            out->d_half = load_u16(blk);
            out->m_half = has_min ? load_u16(blk + 2) : 0;
            const uint8_t* qs = blk + (has_min ? 4 : 2);
            for (int j = 0; j < 16; ++j) {
                out->q[j] = static_cast<int8_t>(qs[j] & 0xF);
                out->q[j + 16] = static_cast<int8_t>(qs[j] >> 4);
            }
            return;
        }
        case QType::Q5_0:
        case QType::Q5_1: {
            // ggml's block_q5_0 / block_q5_1: fp16 d, (fp16 m,) u32 fifth bits (bit j: value j), 16 bytes of nibbles
            // (byte j: value j low, value 16 + j high); q = nibble | fifth bit << 4, in [0, 31].
            const bool has_min = qtype == QType::Q5_1;
            const uint8_t* blk = row + static_cast<size_t>(b) * raw_block_bytes(qtype);
            out->d_half = load_u16(blk);
            out->m_half = has_min ? load_u16(blk + 2) : 0;
            uint32_t qh;
            std::memcpy(&qh, blk + (has_min ? 4 : 2), sizeof(qh));
            const uint8_t* qs = blk + (has_min ? 8 : 6);
            for (int j = 0; j < 16; ++j) {
                out->q[j] = static_cast<int8_t>((qs[j] & 0xF) | (((qh >> j) & 1) << 4));
                out->q[j + 16] = static_cast<int8_t>((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
            }
            return;
        }
        case QType::Q4_K: {
            const uint8_t* sb = row + static_cast<size_t>(b / 8) * 144;
            const int j = b % 8;
            const float d = fp16_to_fp32(load_u16(sb));
            const float dmin = fp16_to_fp32(load_u16(sb + 2));
            int sc = 0;
            int m = 0;
            q4k_scale_min(j, sb + 4, &sc, &m);
            out->scale[0] = d * static_cast<float>(sc);  // exact: 11-bit mantissa x 6-bit integer
            out->bias = -dmin * static_cast<float>(m);
            const uint8_t* qs = sb + 16 + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < kBlock; ++l) out->q[l] = static_cast<int8_t>((qs[l] >> shift) & 0xF);
            return;
        }
        case QType::Q6_K: {
            const uint8_t* sb = row + static_cast<size_t>(b / 8) * 210;
            const int jj = b % 8;  // 32-value block inside the 256-value super-block
            const int half = jj / 4;
            const int quarter = jj % 4;
            const uint8_t* ql = sb + 64 * half;
            const uint8_t* qh = sb + 128 + 32 * half;
            const int8_t* scales = reinterpret_cast<const int8_t*>(sb + 192);
            const float d = fp16_to_fp32(load_u16(sb + 208));
            for (int l = 0; l < kBlock; ++l) {
                const int low = (quarter % 2 == 0 ? ql[l] : ql[l + 32]);
                const int nibble = quarter < 2 ? (low & 0xF) : (low >> 4);
                const int high = (qh[l] >> (2 * quarter)) & 3;
                out->q[l] = static_cast<int8_t>((nibble | (high << 4)) - 32);
            }
            out->scale[0] = d * static_cast<float>(scales[2 * jj]);
            out->scale[1] = d * static_cast<float>(scales[2 * jj + 1]);
            return;
        }
    }
}

void write_tile(QType qtype, const DecodedBlock* rows, int valid_rows, uint8_t* tile) {
    std::memset(tile, 0, tile_bytes(qtype));
    if (is_four_bit(qtype)) {
        for (int i = 0; i < valid_rows; ++i) {
            for (int v = 0; v < 4; ++v) {
                for (int j = 0; j < 4; ++j) {
                    const int lo = rows[i].q[4 * v + j];
                    const int hi = rows[i].q[16 + 4 * v + j];
                    tile[v * 32 + i * 4 + j] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
                    if (is_five_bit(qtype)) {  // the fifth-bit plane: bit v for value 4v+j, bit 4+v for 16+4v+j
                        tile[kNibbleBytes + i * 4 + j] |= static_cast<uint8_t>(((lo >> 4) << v) | ((hi >> 4) << (4 + v)));
                    }
                }
            }
        }
        uint8_t* scales = tile + tile_quant_bytes(qtype);
        for (int i = 0; i < valid_rows; ++i) {
            if (qtype == QType::Q4_K) {
                std::memcpy(scales + 4 * i, &rows[i].scale[0], 4);
                std::memcpy(scales + 32 + 4 * i, &rows[i].bias, 4);
            } else {
                std::memcpy(scales + 2 * i, &rows[i].d_half, 2);
                if (qtype == QType::Q4_1 || qtype == QType::Q5_1) std::memcpy(scales + 16 + 2 * i, &rows[i].m_half, 2);
            }
        }
        return;
    }
    for (int i = 0; i < valid_rows; ++i) {
        for (int c = 0; c < 8; ++c) {
            std::memcpy(tile + c * 32 + i * 4, rows[i].q + 4 * c, 4);
        }
    }
    uint8_t* scales = tile + 256;
    for (int i = 0; i < valid_rows; ++i) {
        if (qtype == QType::Q8_0) {
            std::memcpy(scales + 2 * i, &rows[i].d_half, 2);
        } else {
            std::memcpy(scales + 4 * i, &rows[i].scale[0], 4);
            std::memcpy(scales + 32 + 4 * i, &rows[i].scale[1], 4);
        }
    }
}

}  // namespace

bool qtype_from_int(int value, QType* out) {
    for (const QType qtype : kQTypes) {
        if (static_cast<int>(qtype) == value) {
            *out = qtype;
            return true;
        }
    }
    return false;
}

float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FF;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {
        // Subnormal half: renormalize into a normal float.
        exp = 113;
        while ((mant & 0x400) == 0) {
            mant <<= 1;
            --exp;
        }
        bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

void repack_weight(QType qtype, const uint8_t* raw, int n, int k, uint8_t* packed) {
    const int nb = k / kBlock;
    const size_t row_bytes = static_cast<size_t>(k / raw_block_elems(qtype)) * raw_block_bytes(qtype);
    const int tb = tile_bytes(qtype);
    const int groups = row_groups(n);
    DecodedBlock rows[kRowsPerGroup];
    for (int g = 0; g < groups; ++g) {
        const int valid = (n - g * kRowsPerGroup) < kRowsPerGroup ? n - g * kRowsPerGroup : kRowsPerGroup;
        for (int b = 0; b < nb; ++b) {
            for (int i = 0; i < valid; ++i) {
                const uint8_t* row = raw + static_cast<size_t>(g * kRowsPerGroup + i) * row_bytes;
                decode_block(qtype, row, b, &rows[i]);
            }
            write_tile(qtype, rows, valid, packed + (static_cast<size_t>(g) * nb + b) * tb);
        }
    }
}

}  // namespace ember
