// The scores of a decode-attention tile (decode_attention_body.h): q . k of every query head of a work item over
// the tile's key rows, each key row read and converted once per pass of V::kQueriesPerPass heads, and each score
// summed in a fixed lane order whatever pass and block it falls in. Included by the body, so it has internal
// linkage in each instruction set's file.
#pragma once

#include <algorithm>

#include "decode_attention.h"

namespace ember {
namespace {

// The lane order of a score, as the first kernel summed it, which summed one row's group in passes of
// kFirstPassHeads heads and its n positions of the tile in blocks of kScoreRows, then every four sums of a block
// in hsum4's order and the rest in hsum's. Kept exactly: a changed rounding flips the default model's near-tie
// greedy tokens (docs/decisions.md), which would change what greedy output ember gives and every figure measured
// on it, while a score's order must not depend on which rows share its work item.
constexpr int kFirstPassHeads = 4;

template <class V>
SumOrder sum_order(int g, int group, int n) {
    constexpr int R = V::kScoreRows;
    const int j = g % kFirstPassHeads;  // g's place in its pass
    const int heads = std::min(kFirstPassHeads, group - g / kFirstPassHeads * kFirstPassHeads);
    SumOrder order{n / R * R, 0u, j < heads / 4 * 4};
    for (int r = 0; r < R; ++r) {
        if (j * R + r < heads * R / 4 * 4) order.blocked_fours |= 1u << r;
    }
    return order;
}

// scores[h][i + r] = q_h . k_{i + r} (unscaled) for H query heads q[h] [head_dim] and R key rows from i (a
// multiple of R), each summed in its head's order (sum_order).
template <class V, KVDtype T, int H, int R>
inline void score_block(const float* const* q, const SumOrder* orders, int head_dim, const uint8_t* const* keys,
                        int i, float* const* scores) {
    using Reg = typename V::Reg;
    Reg acc[H][R];
    for (int h = 0; h < H; ++h)
        for (int r = 0; r < R; ++r) acc[h][r] = V::zero();
    for (int c = 0; c < head_dim / V::kLanes; ++c) {
        Reg k[R];
        for (int r = 0; r < R; ++r) k[r] = V::template load_row<T>(keys[i + r], c);
        for (int h = 0; h < H; ++h) {
            const Reg qh = V::load(q[h] + c * V::kLanes);
            for (int r = 0; r < R; ++r) acc[h][r] = V::fmadd(qh, k[r], acc[h][r]);
        }
    }
    // Four horizontal sums at a time share their shuffles (a third of the instructions of one at a time).
    Reg fours[H * R];
    float* four_out[H * R];
    int num_fours = 0;
    for (int h = 0; h < H; ++h) {
        for (int r = 0; r < R; ++r) {
            const int pos = i + r;
            const SumOrder& order = orders[h];
            const bool four = pos < order.blocked_end ? (order.blocked_fours >> (pos % V::kScoreRows)) & 1u
                                                      : order.single_four;
            if (four) {
                fours[num_fours] = acc[h][r];
                four_out[num_fours++] = scores[h] + pos;
            } else {
                scores[h][pos] = V::hsum(acc[h][r]);
            }
        }
    }
    int s = 0;
    if constexpr (H * R >= 4) {
        for (; s + 4 <= num_fours; s += 4) {
            float sums[4];
            V::hsum4(fours + s, sums);
            for (int j = 0; j < 4; ++j) *four_out[s + j] = sums[j];
        }
    }
    for (; s < num_fours; ++s) *four_out[s] = V::hsum_pairwise(fours[s]);
}

// The scores of H query heads over the tile's n key rows, V::kScoreRows rows at a time.
template <class V, KVDtype T, int H>
void score_heads(const float* const* q, const SumOrder* orders, int head_dim, const uint8_t* const* keys, int n,
                 float* const* scores) {
    int i = 0;
    for (; i + V::kScoreRows <= n; i += V::kScoreRows) {
        score_block<V, T, H, V::kScoreRows>(q, orders, head_dim, keys, i, scores);
    }
    for (; i < n; ++i) score_block<V, T, H, 1>(q, orders, head_dim, keys, i, scores);
}

// Up to V::kQueriesPerPass query heads a pass, each pass with its head count as a compile-time constant (with
// run-time counts the compiler kept the accumulators on the stack and each FMA went through memory).
template <class V, KVDtype T>
void tile_scores(const float* const* q, const SumOrder* orders, int queries, int head_dim,
                 const uint8_t* const* keys, int n, float* const* scores) {
    static_assert(V::kQueriesPerPass <= 6, "one case per head count below");
    for (int q0 = 0; q0 < queries; q0 += V::kQueriesPerPass) {
        const float* const* qp = q + q0;
        const SumOrder* op = orders + q0;
        float* const* sp = scores + q0;
        switch (std::min(V::kQueriesPerPass, queries - q0)) {
            case 1: score_heads<V, T, 1>(qp, op, head_dim, keys, n, sp); break;
            case 2: score_heads<V, T, 2>(qp, op, head_dim, keys, n, sp); break;
            case 3: score_heads<V, T, 3>(qp, op, head_dim, keys, n, sp); break;
            case 4: score_heads<V, T, 4>(qp, op, head_dim, keys, n, sp); break;
            case 5: score_heads<V, T, 5>(qp, op, head_dim, keys, n, sp); break;
            default: score_heads<V, T, 6>(qp, op, head_dim, keys, n, sp); break;
        }
    }
}

}  // namespace
}  // namespace ember
