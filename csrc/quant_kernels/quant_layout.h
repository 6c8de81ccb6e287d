// The interleaved ("repacked") weight layout shared by every kernel, and the quantized activations.
//
// A GGUF weight [n, k] keeps its integer quants and scales, but rows are regrouped in groups of
// kRowsPerGroup = 8 so that one 256-bit register holds 4 consecutive k-values of 8 different rows: an
// integer dot product over 4 values then lands in one 32-bit lane per row, and one int->float conversion
// and one FMA serve 8 output rows at once. For every row group and every 32-value block ("tile"):
//
//   4-bit formats (Q4_0, Q4_1, Q4_K): 128 bytes of nibbles = 4 vectors of 32 bytes; in vector v, lane i
//     (row i), byte j holds value 4v+j in its low nibble and value 16+4v+j in its high nibble. Then
//     Q4_0: fp16 d[8];  Q4_1: fp16 d[8], fp16 m[8];  Q4_K: fp32 scale[8], fp32 bias[8] (d*sc, -dmin*m).
//     A weight is scale * nibble + bias, with bias = -8 d for Q4_0.
//   5-bit formats (Q5_0, Q5_1): the 4-bit nibble vectors above, then a 32-byte fifth-bit plane: in it lane i
//     (row i), byte j holds in bit v the fifth bit of value 4v+j and in bit 4+v that of value 16+4v+j (v < 4),
//     so one load serves all 8 nibble vectors and each needs only a shift and a mask to put its bit at bit 4.
//     Then Q5_0: fp16 d[8];  Q5_1: fp16 d[8], fp16 m[8]. A weight is d * q + bias, q in [0, 31], with
//     bias = -16 d for Q5_0 and m for Q5_1: 5.5 / 6 bits per weight, as in the file.
//   8-bit formats (Q8_0, Q6_K): 256 bytes = 8 vectors; in vector c, lane i, byte j holds int8 value 4c+j
//     of row i (Q6_K: q - 32). Then Q8_0: fp16 d[8];  Q6_K: fp32 scale[2][8], one per 16-value half.
//
// Activations are quantized per 32-value block like llama.cpp's Q8_0/Q8_1: d = amax / 127,
// q = round-half-even(x * 127 / amax), and s = d * sum(q) for the formats with a bias.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ember {

// The ids Python passes for each type. Python reads them (and every size below) through the module's
// layout() rather than keeping its own copy, so this enum and the functions under it are the one definition.
enum class QType : int { Q8_0 = 0, Q4_0 = 1, Q4_1 = 2, Q4_K = 3, Q6_K = 4, Q5_0 = 5, Q5_1 = 6 };
constexpr QType kQTypes[] = {QType::Q8_0, QType::Q4_0, QType::Q4_1, QType::Q4_K,
                             QType::Q6_K, QType::Q5_0, QType::Q5_1};

constexpr int kRowsPerGroup = 8;
constexpr int kBlock = 32;
constexpr int kSuperBlock = 256;

// The GGUF name of a type, as Python's block formats spell it.
constexpr const char* qtype_name(QType qtype) {
    switch (qtype) {
        case QType::Q8_0: return "Q8_0";
        case QType::Q4_0: return "Q4_0";
        case QType::Q4_1: return "Q4_1";
        case QType::Q4_K: return "Q4_K";
        case QType::Q6_K: return "Q6_K";
        case QType::Q5_0: return "Q5_0";
        case QType::Q5_1: return "Q5_1";
    }
    return "";
}

constexpr bool is_five_bit(QType qtype) { return qtype == QType::Q5_0 || qtype == QType::Q5_1; }

// The formats whose tiles start with the 128 bytes of nibbles, with a bias term: the 4-bit ones and the 5-bit
// ones (whose fifth-bit plane follows the nibbles).
constexpr bool is_four_bit(QType qtype) {
    return qtype == QType::Q4_0 || qtype == QType::Q4_1 || qtype == QType::Q4_K || is_five_bit(qtype);
}

// False when `value` is no QType id (it comes from Python).
bool qtype_from_int(int value, QType* out);

// Elements and bytes of one raw GGUF block (ggml-common.h).
constexpr int raw_block_elems(QType qtype) {
    return (qtype == QType::Q4_K || qtype == QType::Q6_K) ? kSuperBlock : kBlock;
}

constexpr int raw_block_bytes(QType qtype) {
    switch (qtype) {
        case QType::Q8_0: return 34;
        case QType::Q4_0: return 18;
        case QType::Q4_1: return 20;
        case QType::Q4_K: return 144;
        case QType::Q6_K: return 210;
        case QType::Q5_0: return 22;  // fp16 d, u32 fifth bits, 16 bytes of nibbles
        case QType::Q5_1: return 24;  // fp16 d, fp16 m, u32 fifth bits, 16 bytes of nibbles
    }
    return 0;
}

// Bytes of the quants of one repacked tile (8 rows x 32 values): nibbles (and the fifth-bit plane) or int8; the
// scales follow them.
constexpr int kNibbleBytes = kRowsPerGroup * kBlock / 2;
constexpr int kFifthBitBytes = kRowsPerGroup * kBlock / 8;
constexpr int tile_quant_bytes(QType qtype) {
    return is_five_bit(qtype) ? kNibbleBytes + kFifthBitBytes : is_four_bit(qtype) ? kNibbleBytes : 2 * kNibbleBytes;
}

// Bytes of one repacked tile, quants then per-row scales as laid out above. The kernels size their loops with
// this constexpr too, so the layout's sizes are written down once.
constexpr int tile_bytes(QType qtype) {
    switch (qtype) {
        case QType::Q8_0: return tile_quant_bytes(qtype) + kRowsPerGroup * 2;      // fp16 d
        case QType::Q4_0: return tile_quant_bytes(qtype) + kRowsPerGroup * 2;      // fp16 d
        case QType::Q4_1: return tile_quant_bytes(qtype) + kRowsPerGroup * 2 * 2;  // fp16 d, m
        case QType::Q4_K: return tile_quant_bytes(qtype) + kRowsPerGroup * 4 * 2;  // fp32 scale, bias
        case QType::Q6_K: return tile_quant_bytes(qtype) + kRowsPerGroup * 4 * 2;  // fp32 scale per half
        case QType::Q5_0: return tile_quant_bytes(qtype) + kRowsPerGroup * 2;      // fp16 d
        case QType::Q5_1: return tile_quant_bytes(qtype) + kRowsPerGroup * 2 * 2;  // fp16 d, m
    }
    return 0;
}
static_assert(tile_quant_bytes(QType::Q4_0) == 128 && tile_quant_bytes(QType::Q8_0) == 256 &&
                  tile_quant_bytes(QType::Q5_0) == 160,
              "the kernels read a tile's scales at tile + 128 (4-bit), + 160 (5-bit) and + 256 (8-bit)");

inline int row_groups(int n) { return (n + kRowsPerGroup - 1) / kRowsPerGroup; }
inline size_t repacked_bytes(QType qtype, int n, int k) {
    return static_cast<size_t>(row_groups(n)) * static_cast<size_t>(k / kBlock) * tile_bytes(qtype);
}

// Raw GGUF rows [n, k] -> repacked groups; rows past n are zero (they produce zeros, never stored).
void repack_weight(QType qtype, const uint8_t* raw, int n, int k, uint8_t* packed);

float fp16_to_fp32(uint16_t h);

// Activation rows quantized per 32-value block; row t of q starts at q + t * k.
struct QuantizedActs {
    int8_t* q;   // [m, k]
    float* d;    // [m, k / 32]
    float* s;    // [m, k / 32], d * sum(q)
    int k;
};

// One work item of a matmul: row groups [g_begin, g_end) x tokens [t_begin, t_end).
struct MatmulSlice {
    QType qtype;
    const uint8_t* packed;
    int n;
    int k;
    const QuantizedActs* acts;
    float* y;  // row t of the output starts at y + t * ldy
    int ldy;   // n for a plain [m, n] output; wider when several weights fill column ranges of one matrix
    int g_begin;
    int g_end;
    int t_begin;
    int t_end;
};

void quantize_rows_scalar(const float* x, int t_begin, int t_end, const QuantizedActs& acts);
void matmul_slice_scalar(const MatmulSlice& slice);

#if defined(EMBER_HAVE_AVX2)
void quantize_rows_avx2(const float* x, int t_begin, int t_end, const QuantizedActs& acts);
void matmul_slice_avx2(const MatmulSlice& slice);
#endif

}  // namespace ember
