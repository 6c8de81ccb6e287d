// What the per-instruction-set bodies of the decode attention (decode_attention_body.h) share: the tile size,
// the online-softmax state, the softmax step itself (AVX2, compiled once in decode_attention_avx2.cpp and called
// by every body: it is a small share of the work and needs the vector exp), and the AVX-512 body's entry point.
#pragma once

#include "decode_attention.h"

namespace ember {

constexpr int kTile = 32;  // positions per tile: 32 value rows of 64 fp32 dims stay within L1

// The running softmax of a split for its group's heads.
struct TileSoftmax {
    float* acc;  // [group, head_dim] unnormalised weighted values
    float* max;  // [group] running max of the scaled scores
    float* sum;  // [group] running sum of exp(score - max)
    int group;
    int head_dim;
};

// scores [group, kTile] of n positions, raw q.k on entry -> on return the weights exp(s - running max) times
// the value rows' scales, where s = raw * key_scales[i]; what was accumulated so far is rescaled when the max
// grows. Defined in decode_attention_avx2.cpp.
void attention_tile_softmax(float* scores, int n, const float* key_scales, const float* value_scales,
                            const TileSoftmax& state);

#if defined(EMBER_HAVE_AVX512_VNNI)
// attend_split on 16-wide AVX-512 registers (decode_attention_avx512.cpp); head_dim a multiple of 16.
void attend_split_avx512(const AttentionRows& rows, const PagedKV& ctx, int group, int head_dim, float scale,
                         int split, int splits, AttentionScratch& scratch);
#endif

}  // namespace ember
