// The body of the flash-decoding split (decode_attention.h), written once over a SIMD width `V` and included by
// the file of each instruction set: decode_attention_avx2.cpp (V = 8 floats) and decode_attention_avx512.cpp
// (V = 16 floats). Everything here has internal linkage, so each file keeps its own copy compiled with its own
// flags (an inline function shared across the two would let the linker hand AVX-512 code to an AVX2-only CPU).
//
// Per split, the positions go in tiles of kTile, and per tile each kv head in turn: the tile's scores for the
// query heads of every row of the work item (each key row read and converted once per pass of up to
// V::kQueriesPerPass heads, so the k + 1 rows of a verified draft share their reads), the online-softmax update
// of each row (attention_tile_softmax, AVX2, shared), then the tile's value rows added into the accumulators.
// The heads per pass, the rows per score block and the value chunks per pass are compile-time constants, so
// every accumulator stays in a register (with run-time counts the compiler kept them on the stack and each FMA
// went through memory). While a kv head's value rows of one tile stream past, its rows of the next tile are
// asked for (AheadRows): a read from DRAM then mostly finds its line in L1.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>

#include <immintrin.h>

#include "decode_attention.h"
#include "decode_attention_scores.h"
#include "decode_attention_tile.h"

namespace ember {
namespace {

// The factor a row's stored values are multiplied by: its q8_0 scale, else 1.
template <KVDtype T>
inline float row_scale(const uint8_t* row, int head_dim) {
    if constexpr (T == KVDtype::kQ8_0) {
        float scale;
        std::memcpy(&scale, row + head_dim, sizeof(scale));
        return scale;
    } else {
        (void)row;
        (void)head_dim;
        return 1.0f;
    }
}

inline const uint8_t* stored_row(const uint8_t* cache, const uint8_t* fresh, const PagedKV& ctx, int pos,
                                 int kv_head) {
    if (fresh != nullptr && pos == ctx.context_len - 1) return fresh + kv_head * ctx.row_bytes;
    const int64_t block = ctx.block_table[pos / ctx.block_size];
    const int64_t slot = block * ctx.block_size + pos % ctx.block_size;
    return cache + (slot * ctx.num_kv_heads + kv_head) * ctx.row_bytes;
}

// slots[i] = the cache slot of position first + i, for i < n, with one block-table lookup (and one division) per
// block rather than per row: within a block a slot is the previous one plus one, and the divisions were a
// measurable share of a step's compute. Read once per tile and shared by the tile's kv heads, keys and values.
inline void tile_slots(const PagedKV& ctx, int first, int n, int64_t* slots) {
    int i = 0;
    while (i < n) {
        const int pos = first + i;
        const int offset = pos % ctx.block_size;
        const int run = std::min(ctx.block_size - offset, n - i);
        const int64_t slot = ctx.block_table[pos / ctx.block_size] * ctx.block_size + offset;
        for (int j = 0; j < run; ++j) slots[i + j] = slot + j;
        i += run;
    }
}

// rows[i] = stored_row(.., first + i, kv_head) for i < n, from the tile's slots (tile_slots).
inline void stored_rows(const uint8_t* cache, const uint8_t* fresh, const PagedKV& ctx, const int64_t* slots,
                        int first, int n, int kv_head, const uint8_t** rows) {
    const uint8_t* head = cache + kv_head * ctx.row_bytes;
    const int64_t step = ctx.num_kv_heads * ctx.row_bytes;
    for (int i = 0; i < n; ++i) rows[i] = head + slots[i] * step;
    if (fresh != nullptr && first <= ctx.context_len - 1 && ctx.context_len - 1 < first + n) {
        rows[ctx.context_len - 1 - first] = fresh + kv_head * ctx.row_bytes;
    }
}

// Asks for the `bytes` bytes at `row` ahead of their use (a row need not start on a cache line).
inline void prefetch_row(const uint8_t* row, int64_t bytes) {
    for (int64_t offset = 0; offset < bytes; offset += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(row + offset), _MM_HINT_T0);
    }
    _mm_prefetch(reinterpret_cast<const char*>(row + bytes - 1), _MM_HINT_T0);
}

// Asks for the key and value rows of positions [first, first + n) of every kv head: the rows of a position's kv
// heads lie side by side, so this is one span per position and cache; the block table scatters the blocks, which
// the hardware prefetchers do not follow. Used for a split's first tile; later tiles ask row by row (AheadRows).
inline void prefetch_rows(const PagedKV& ctx, int first, int n) {
    const int64_t span = ctx.num_kv_heads * ctx.row_bytes;
    for (int pos = first; pos < first + n; ++pos) {
        prefetch_row(stored_row(ctx.key_cache, ctx.new_keys, ctx, pos, 0), span);
        prefetch_row(stored_row(ctx.value_cache, ctx.new_values, ctx, pos, 0), span);
    }
}

// The next tile's rows of one kv head, asked for while this tile's value rows stream past (one key and one value
// row per value row used). Asked for in one burst at the start of a tile, the requests queued behind the few
// line-fill buffers and the core waited for them (1.6-1.9x slower from DRAM, bench_decode_attention).
struct AheadRows {
    const uint8_t* const* keys;
    const uint8_t* const* values;
    int n;
    int64_t row_bytes;
};

// acc[h][chunks c0 .. c0 + C) += sum_i weights[h][i] * v_i over rows i in [i0, i1), for H query heads: the
// chunks' accumulators stay in registers while the rows stream past (from L1 after the first pass), each
// summed in row order; `ahead` (or nullptr) is asked for on the way.
template <class V, KVDtype T, int H, int C>
[[gnu::always_inline]] inline void value_block(const float* const* weights, float* const* acc, int64_t acc_offset,
                        const uint8_t* const* values, int i0, int i1, int c0, const AheadRows* ahead) {
    using Reg = typename V::Reg;
    Reg a[H][C];
    for (int h = 0; h < H; ++h)
        for (int j = 0; j < C; ++j) a[h][j] = V::load(acc[h] + acc_offset + (c0 + j) * V::kLanes);
    for (int i = i0; i < i1; ++i) {
        if (ahead != nullptr && i < ahead->n) {
            prefetch_row(ahead->keys[i], ahead->row_bytes);
            prefetch_row(ahead->values[i], ahead->row_bytes);
        }
        Reg v[C];
        for (int j = 0; j < C; ++j) v[j] = V::template load_row<T>(values[i], c0 + j);
        for (int h = 0; h < H; ++h) {
            const Reg w = V::set1(weights[h][i]);
            for (int j = 0; j < C; ++j) a[h][j] = V::fmadd(w, v[j], a[h][j]);
        }
    }
    for (int h = 0; h < H; ++h)
        for (int j = 0; j < C; ++j) V::store(acc[h] + acc_offset + (c0 + j) * V::kLanes, a[h][j]);
}

template <class V, KVDtype T, int H>
void value_heads(const float* const* weights, float* const* acc, int64_t acc_offset, const uint8_t* const* values,
                 int i0, int i1, int head_dim, const AheadRows* ahead) {
    const int chunks = head_dim / V::kLanes;
    int c = 0;
    for (; c + V::kValueChunks <= chunks; c += V::kValueChunks) {
        value_block<V, T, H, V::kValueChunks>(weights, acc, acc_offset, values, i0, i1, c,
                                              c == 0 ? ahead : nullptr);
    }
    for (; c < chunks; ++c) value_block<V, T, H, 1>(weights, acc, acc_offset, values, i0, i1, c, c == 0 ? ahead : nullptr);
}

// Passes of up to V::kQueriesPerPass query heads, as tile_scores (decode_attention_scores.h) makes them.
template <class V, KVDtype T>
void tile_values(const float* const* weights, float* const* acc, int64_t acc_offset, int queries,
                 const uint8_t* const* values, int i0, int i1, int head_dim, const AheadRows* ahead) {
    for (int q0 = 0; q0 < queries; q0 += V::kQueriesPerPass) {
        const float* const* wp = weights + q0;
        float* const* ap = acc + q0;
        const AheadRows* a = q0 == 0 ? ahead : nullptr;
        switch (std::min(V::kQueriesPerPass, queries - q0)) {
            case 1: value_heads<V, T, 1>(wp, ap, acc_offset, values, i0, i1, head_dim, a); break;
            case 2: value_heads<V, T, 2>(wp, ap, acc_offset, values, i0, i1, head_dim, a); break;
            case 3: value_heads<V, T, 3>(wp, ap, acc_offset, values, i0, i1, head_dim, a); break;
            case 4: value_heads<V, T, 4>(wp, ap, acc_offset, values, i0, i1, head_dim, a); break;
            case 5: value_heads<V, T, 5>(wp, ap, acc_offset, values, i0, i1, head_dim, a); break;
            default: value_heads<V, T, 6>(wp, ap, acc_offset, values, i0, i1, head_dim, a); break;
        }
    }
}

// The query heads of a work item's rows that read the tile, as lists in scratch, for kv head 0 (the passes add
// a kv head's offset): in row order for the softmax and the values (queries, score_rows, accumulators), and for
// the score passes with the heads whose blocks sum in hsum4's order first (score_queries). Built again only when
// the rows' counts change, which is at a row's last tile.
struct QueryLists {
    int built[kMaxRunRows] = {};  // the tile_rows they were built for
    int reading[kMaxRunRows];     // the rows that read the tile, in order: the lists hold their heads in turn
    int num_reading = 0;
    int queries = 0;
    int fours = 0;
    bool resums = false;  // some head sums positions past its row's last whole block in another order
    bool valid = false;

    template <class V>
    void update(const AttentionRows& rows, const int* tile_rows, int group, int head_dim, AttentionScratch& scratch) {
        if (valid && std::equal(tile_rows, tile_rows + rows.rows, built)) return;
        std::copy(tile_rows, tile_rows + rows.rows, built);
        valid = true;
        num_reading = 0;
        for (int r = 0; r < rows.rows; ++r) {
            if (tile_rows[r] > 0) reading[num_reading++] = r;
        }
        queries = 0;
        for (int at = 0; at < num_reading; ++at) {
            const int r = reading[at];
            float* partial = rows.partials + r * rows.row_stride;
            for (int g = 0; g < group; ++g, ++queries) {
                scratch.queries[queries] = rows.q + r * rows.q_stride + g * head_dim;
                scratch.score_rows[queries] = scratch.scores.data() + queries * kTile;
                scratch.accumulators[queries] = partial + g * head_dim;
            }
        }
        fours = 0;
        resums = false;
        int k = 0;
        for (const bool four : {true, false}) {
            for (int at = 0; at < num_reading; ++at) {
                const int r = reading[at];
                const bool past_blocks = tile_rows[r] % V::kScoreRows != 0;
                for (int g = 0; g < group; ++g) {
                    if (blocked_four<V>(g, group) != four) continue;
                    const int query = at * group + g;
                    const bool resum = past_blocks && single_four(g, group) != four;
                    scratch.score_queries[k++] =
                        ScoreQuery{scratch.queries[query], scratch.score_rows[query], tile_rows[r], resum};
                    fours += four;
                    resums = resums || resum;
                }
            }
        }
    }
};

// The partial results (decode_attention.h) of every row of `rows` over [begin, ends[r]) of its context, for every
// kv head's group. The rows read one block table, so each tile's key and value rows are read (and converted) once
// for all of them; per tile the kv heads take turns, so the rows, which lie side by side for the kv heads of a
// position, are read in address order. Row r's sums run exactly as they would with r alone: its scores, its
// online softmax over its own n_r positions of the tile, and its values in position order.
template <class V, KVDtype T>
void attend_range(const AttentionRows& rows, const PagedKV& ctx, int group, int head_dim, float scale, int begin,
                  const int* ends, AttentionScratch& scratch) {
    int end = begin;
    for (int r = 0; r < rows.rows; ++r) end = std::max(end, ends[r]);
    for (int r = 0; r < rows.rows; ++r) {
        for (int h = 0; h < ctx.num_kv_heads; ++h) {
            float* partial = rows.partials + r * rows.row_stride + h * rows.head_stride;
            std::fill(partial, partial + group * head_dim, 0.0f);
            std::fill(partial + group * head_dim, partial + group * (head_dim + 1), -INFINITY);
            std::fill(partial + group * (head_dim + 1), partial + group * (head_dim + 2), 0.0f);
        }
    }
    const uint8_t* keys[kTile];
    const uint8_t* values[kTile];
    float key_scales[kTile];
    float value_scales[kTile];
    const uint8_t* ahead_keys[kTile];
    const uint8_t* ahead_values[kTile];
    int64_t slots[kTile];        // the tile's cache slots
    int64_t ahead_slots[kTile];  // the next tile's
    int tile_rows[kMaxRunRows];  // rows of the tile row r reads
    QueryLists lists;
    prefetch_rows(ctx, begin, std::min(kTile, end - begin));
    tile_slots(ctx, begin, std::min(kTile, end - begin), slots);
    if constexpr (T != KVDtype::kQ8_0) {  // the same for every row: set once (a q8_0 row carries its own)
        std::fill(key_scales, key_scales + kTile, scale);
        std::fill(value_scales, value_scales + kTile, 1.0f);
    }
    for (int first = begin; first < end; first += kTile) {
        const int n = std::min(kTile, end - first);
        const int n_ahead = std::max(0, std::min(kTile, end - first - kTile));
        int common = n;  // rows of the tile every row that reads it at all reads
        for (int r = 0; r < rows.rows; ++r) {
            tile_rows[r] = std::max(0, std::min(n, ends[r] - first));
            if (tile_rows[r] > 0) common = std::min(common, tile_rows[r]);
        }
        lists.update<V>(rows, tile_rows, group, head_dim, scratch);
        tile_slots(ctx, first + kTile, n_ahead, ahead_slots);
        for (int h = 0; h < ctx.num_kv_heads; ++h) {
            stored_rows(ctx.key_cache, ctx.new_keys, ctx, slots, first, n, h, keys);
            stored_rows(ctx.value_cache, ctx.new_values, ctx, slots, first, n, h, values);
            if constexpr (T == KVDtype::kQ8_0) {
                for (int i = 0; i < n; ++i) {
                    key_scales[i] = scale * row_scale<T>(keys[i], head_dim);
                    value_scales[i] = row_scale<T>(values[i], head_dim);
                }
            }
            stored_rows(ctx.key_cache, ctx.new_keys, ctx, ahead_slots, first + kTile, n_ahead, h, ahead_keys);
            stored_rows(ctx.value_cache, ctx.new_values, ctx, ahead_slots, first + kTile, n_ahead, h, ahead_values);
            const AheadRows ahead{ahead_keys, ahead_values, n_ahead, ctx.row_bytes};
            const int64_t q_offset = static_cast<int64_t>(h) * group * head_dim;
            const int64_t acc_offset = h * rows.head_stride;
            // Every reading row's scores over all n rows of the tile: a row that ends inside it ignores the
            // scores past its end (rows of the cache this step has written, so finite).
            tile_scores<V, T>(scratch.score_queries.data(), lists.fours, lists.queries, q_offset, head_dim, keys, n,
                              lists.resums);
            for (int at = 0; at < lists.num_reading; ++at) {
                const int r = lists.reading[at];
                float* partial = rows.partials + r * rows.row_stride + acc_offset;
                const TileSoftmax state{partial, partial + group * head_dim, partial + group * (head_dim + 1),
                                        group, head_dim};
                attention_tile_softmax(scratch.scores.data() + at * group * kTile, tile_rows[r], key_scales,
                                       value_scales, state);
            }
            const float* const* weights = scratch.score_rows.data();
            float* const* acc = scratch.accumulators.data();
            tile_values<V, T>(weights, acc, acc_offset, lists.queries, values, 0, common, head_dim, &ahead);
            // then each row that reads further, its own remaining rows
            for (int at = 0; at < lists.num_reading; ++at) {
                const int r = lists.reading[at];
                if (tile_rows[r] > common) {
                    tile_values<V, T>(weights + at * group, acc + at * group, acc_offset, group, values, common,
                                      tile_rows[r], head_dim, nullptr);
                }
            }
        }
        std::copy(ahead_slots, ahead_slots + n_ahead, slots);
    }
}

// attend_split's body for one instruction set: each row's part of the split, then the dtype's instantiation.
template <class V>
void attend_split_with(const AttentionRows& rows, const PagedKV& ctx, int group, int head_dim, float scale,
                       int split, int splits, AttentionScratch& scratch) {
    const int begin = split_bound(rows.context_lens[0], split, splits);  // the same for every row of a run
    int ends[kMaxRunRows];
    for (int r = 0; r < rows.rows; ++r) ends[r] = split_bound(rows.context_lens[r], split + 1, splits);
    switch (ctx.dtype) {
        case KVDtype::kF32:
            return attend_range<V, KVDtype::kF32>(rows, ctx, group, head_dim, scale, begin, ends, scratch);
        case KVDtype::kF16:
            return attend_range<V, KVDtype::kF16>(rows, ctx, group, head_dim, scale, begin, ends, scratch);
        case KVDtype::kBF16:
            return attend_range<V, KVDtype::kBF16>(rows, ctx, group, head_dim, scale, begin, ends, scratch);
        case KVDtype::kQ8_0:
            return attend_range<V, KVDtype::kQ8_0>(rows, ctx, group, head_dim, scale, begin, ends, scratch);
    }
}

}  // namespace
}  // namespace ember
