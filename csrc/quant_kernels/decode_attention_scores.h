// The scores of a decode-attention tile (decode_attention_body.h): q . k of every query head of a work item over
// the tile's key rows, each key row read and converted once per pass of V::kQueriesPerPass heads, and each score
// summed in a fixed lane order whatever pass and block it falls in. Included by the body, so it has internal
// linkage in each instruction set's file.
#pragma once

#include <algorithm>

#include "decode_attention.h"

namespace ember {
namespace {

// The lane order of a score is the one the first kernel gave it, which summed one row's group in passes of
// kFirstPassHeads heads and the tile's n positions in blocks of kScoreRows (then one at a time), and in each
// block the first four sums of every four in hsum4's order, any left over in hsum's. Kept exactly: a changed
// rounding flips near-tie greedy tokens of the default model (docs/decisions.md), so the greedy output ember
// gives would change with it, and a score's order must not depend on which rows share its work item.
constexpr int kFirstPassHeads = 4;

// Whether head g of a group sums its block positions in hsum4's order (for the kScoreRows used, every row of a
// block agrees), and its positions past the last whole block.
template <class V>
bool blocked_four(int g, int group) {
    constexpr int R = V::kScoreRows;
    static_assert(R == 1 || R == 2 || R == 4, "a head's block rows must share one order");
    const int heads = std::min(kFirstPassHeads, group - g / kFirstPassHeads * kFirstPassHeads);
    return g % kFirstPassHeads * R < heads * R / 4 * 4;
}

inline bool single_four(int g, int group) {
    const int heads = std::min(kFirstPassHeads, group - g / kFirstPassHeads * kFirstPassHeads);
    return g % kFirstPassHeads < heads / 4 * 4;
}

// scores[h][i + r] = q[h] . k_{i + r} (unscaled) for H query heads and R key rows from i; the first F heads'
// sums in hsum4's order, the others in hsum's. Always inlined into the loop over the tile's blocks, which keeps
// the heads' pointers in registers (as a call per block it ran ~35% slower).
template <class V, KVDtype T, int H, int R, int F>
[[gnu::always_inline]] inline void score_block(const float* const* q, float* const* scores, int head_dim,
                                                const uint8_t* const* keys, int i) {
    using Reg = typename V::Reg;
    Reg acc[H * R];  // head h, key row r at h * R + r
    for (int a = 0; a < H * R; ++a) acc[a] = V::zero();
    for (int c = 0; c < head_dim / V::kLanes; ++c) {
        Reg k[R];
        for (int r = 0; r < R; ++r) k[r] = V::template load_row<T>(keys[i + r], c);
        for (int h = 0; h < H; ++h) {
            const Reg qh = V::load(q[h] + c * V::kLanes);
            for (int r = 0; r < R; ++r) acc[h * R + r] = V::fmadd(qh, k[r], acc[h * R + r]);
        }
    }
    constexpr int kFours = F * R;           // sums in hsum4's order,
    constexpr int kQuads = kFours / 4 * 4;  // those four at a time: they share their shuffles
    float sums[H * R];
    for (int s = 0; s < kQuads; s += 4) V::hsum4(acc + s, sums + s);
    for (int s = kQuads; s < kFours; ++s) sums[s] = V::hsum_pairwise(acc[s]);
    for (int s = kFours; s < H * R; ++s) sums[s] = V::hsum(acc[s]);
    for (int h = 0; h < H; ++h)
        for (int r = 0; r < R; ++r) scores[h][i + r] = sums[h * R + r];
}

// The scores of H query heads over the tile's n key rows, V::kScoreRows rows at a time, each head in its block
// order (the first F in hsum4's).
template <class V, KVDtype T, int H, int F>
void score_heads(const ScoreQuery* qs, int64_t q_offset, int head_dim, const uint8_t* const* keys, int n) {
    const float* q[H];
    float* scores[H];
    for (int h = 0; h < H; ++h) q[h] = qs[h].q + q_offset, scores[h] = qs[h].scores;
    int i = 0;
    for (; i + V::kScoreRows <= n; i += V::kScoreRows) {
        score_block<V, T, H, V::kScoreRows, F>(q, scores, head_dim, keys, i);
    }
    for (; i < n; ++i) score_block<V, T, H, 1, F>(q, scores, head_dim, keys, i);
}

// A pass of H heads of which the first `fours` sum in hsum4's order: F made a compile-time constant.
template <class V, KVDtype T, int H, int F = 0>
void score_pass(const ScoreQuery* qs, int fours, int64_t q_offset, int head_dim, const uint8_t* const* keys, int n) {
    if constexpr (F < H) {
        if (fours > F) return score_pass<V, T, H, F + 1>(qs, fours, q_offset, head_dim, keys, n);
    }
    score_heads<V, T, H, F>(qs, q_offset, head_dim, keys, n);
}

// One score of a position past its row's last whole block, in the order a lone token sums it there.
template <class V, KVDtype T>
float single_score(const float* q, const uint8_t* key, int head_dim, bool four) {
    using Reg = typename V::Reg;
    Reg acc = V::zero();
    for (int c = 0; c < head_dim / V::kLanes; ++c) acc = V::fmadd(V::load(q + c * V::kLanes), V::template load_row<T>(key, c), acc);
    return four ? V::hsum_pairwise(acc) : V::hsum(acc);
}

// The scores of every query head of a work item over the tile's n key rows for one kv head (its queries at
// q_offset from kv head 0's): qs [queries] with the heads whose blocks sum in hsum4's order first (`fours` of
// them), in passes of up to V::kQueriesPerPass heads, each with its head count as a compile-time constant (with
// run-time counts the compiler kept the accumulators on the stack and each FMA went through memory). The passes
// sum every position in its head's block order; with `resums`, a head's positions past its row's last whole
// block are summed again in the other order where it has one (at most kScoreRows - 1 positions of a row's last
// tile).
template <class V, KVDtype T>
void tile_scores(const ScoreQuery* qs, int fours, int queries, int64_t q_offset, int head_dim,
                 const uint8_t* const* keys, int n, bool resums) {
    static_assert(V::kQueriesPerPass <= 6, "one case per head count below");
    for (int q0 = 0; q0 < queries; q0 += V::kQueriesPerPass) {
        const ScoreQuery* pass = qs + q0;
        const int f = std::clamp(fours - q0, 0, V::kQueriesPerPass);
        switch (std::min(V::kQueriesPerPass, queries - q0)) {
            case 1: score_pass<V, T, 1>(pass, f, q_offset, head_dim, keys, n); break;
            case 2: score_pass<V, T, 2>(pass, f, q_offset, head_dim, keys, n); break;
            case 3: score_pass<V, T, 3>(pass, f, q_offset, head_dim, keys, n); break;
            case 4: score_pass<V, T, 4>(pass, f, q_offset, head_dim, keys, n); break;
            case 5: score_pass<V, T, 5>(pass, f, q_offset, head_dim, keys, n); break;
            default: score_pass<V, T, 6>(pass, f, q_offset, head_dim, keys, n); break;
        }
    }
    if (!resums) return;
    for (int k = 0; k < queries; ++k) {
        const ScoreQuery& query = qs[k];
        if (!query.resum) continue;
        for (int i = query.n / V::kScoreRows * V::kScoreRows; i < query.n; ++i) {
            query.scores[i] = single_score<V, T>(query.q + q_offset, keys[i], head_dim, k >= fours);
        }
    }
}

}  // namespace
}  // namespace ember
