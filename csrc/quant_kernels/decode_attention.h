// Flash-decoding of new tokens over the paged KV cache, for the fused decode step: one work item is one split (a
// range of context positions) of a run of rows, for every kv head: one new token, or several of one sequence
// (speculative verification), which then share every key and value row they read. It reads every key and value
// row of its range once for all the query heads of the item, keeps an online softmax (running max and sum) per
// row, and leaves unnormalised partial results; merge_splits joins a token's splits with their log-sum-exp
// weights. Splitting the context lets one long sequence use every thread. Runs on AVX2 + FMA + F16C (8 floats
// a register) or AVX-512 (16), chosen per step (AttentionIsa); the bodies are one template
// (decode_attention_body.h).
#pragma once

#include <cstdint>
#include <vector>

#include "kv_format.h"

namespace ember {

// Where one token's context lives: caches [num_blocks, block_size, num_kv_heads, row_bytes] in `dtype`.
struct PagedKV {
    const uint8_t* key_cache;
    const uint8_t* value_cache;
    const int64_t* block_table;  // physical block of each block_size positions
    int block_size;
    int num_kv_heads;
    KVDtype dtype;
    int64_t row_bytes;
    int context_len;  // positions 0 .. context_len - 1, the new token's included
    // The new token's stored key and value rows of all kv heads [num_kv_heads, row_bytes], when the caller has
    // them at hand (then its cache slot is not read, so another thread may be writing it); nullptr: the cache.
    const uint8_t* new_keys;
    const uint8_t* new_values;
};

// The instruction sets the attention runs on; the ids Python passes (0 asks for the best one here).
enum class AttentionIsa : int { kAvx2 = 1, kAvx512 = 2 };

// `id` (0: the best this build and CPU run for head_dim) -> the set to use; false when this build or CPU lacks
// it, or when AVX-512 is asked for a head_dim that is not a multiple of 16.
bool attention_isa_from_int(int id, int head_dim, AttentionIsa* out);

// Floats of one partial result: acc [group, head_dim] (unnormalised), then max [group], then sum [group].
inline int partial_floats(int group, int head_dim) { return group * (head_dim + 2); }

// The most rows one work item attends for at once (AttentionRows).
constexpr int kMaxRunRows = 8;

// Where a work item's rows and results are: `rows` new tokens of one sequence (speculative verification sends
// k + 1), which read one block table and have the same split layout (AttentionPlan). Row r's query heads are
// [num_kv_heads * group, head_dim] at q + r * q_stride (kv head h's group at + h * group * head_dim), its
// context length context_lens[r] (itself included), and its partial result of kv head h (see partial_floats)
// goes to partials + r * row_stride + h * head_stride.
struct AttentionRows {
    const float* q;
    int64_t q_stride;
    const int64_t* context_lens;
    int rows;  // 1 .. kMaxRunRows
    float* partials;
    int64_t row_stride;
    int64_t head_stride;
};

// One query head of a work item as the score passes see it (decode_attention_scores.h): its query [head_dim] of
// kv head 0's group (other kv heads' at an offset), the tile's scores it gets [kTile], how many of the tile's
// rows its row reads, and whether its positions past its last whole block sum in another order than its blocks.
struct ScoreQuery {
    const float* q;
    float* scores;
    int n;
    bool resum;
};

// What one thread's work items compute in: the tile's scores of every query head of a run, and the lists the
// passes over them walk.
struct AttentionScratch {
    std::vector<float> scores;               // [kMaxRunRows * group, kTile]
    std::vector<const float*> queries;       // a query head of a row
    std::vector<float*> score_rows;          // its scores
    std::vector<float*> accumulators;        // its partial result's accumulators
    std::vector<ScoreQuery> score_queries;   // the same heads for the score passes: hsum4-order blocks first

    explicit AttentionScratch(int group);
};

// How many splits a token's context is cut into: one per kMinSplitLen positions, at most kMaxSplits. It depends
// on the token's own context length alone, never on what else shares the step or on the thread count, so a
// token's attention sums in the same order in any batch: speculative verification's rows (k + 1 new tokens of
// one sequence in one step) give exactly what decoding them one by one gives.
int attention_splits(int64_t context_len);

// The first position of split `split` of `splits` (split == splits: the context's end). Inner bounds fall on
// tile edges, so the rows of a verified draft, whose lengths differ by a few positions, mostly cut their
// contexts at the same places and can share a work item.
int split_bound(int64_t context_len, int split, int splits);

// Consecutive rows [first, first + rows) that one work item attends for together.
struct RowRun {
    int first;
    int rows;
};

// One work item of an AttentionPlan: split `split` of the `splits` of every row of `run`, whose longest context
// is `longest` positions; `rows` says where their queries and partial results are.
struct AttentionItem {
    RowRun run;
    int split;
    int splits;
    int longest;
    AttentionRows rows;
};

// How a batch's attention is cut into work items, in the step and alone alike: each token's split count
// (attention_splits), the most any token has, and the runs of rows that share items: consecutive rows that read
// the same blocks (equal block table entries up to the longer context) with the same split count and inner
// bounds, at most kMaxRunRows, cut so the batch keeps about two items a thread for dynamic scheduling. Item i is
// run i / max_splits, split i % max_splits. The partial results are laid out [m, num_kv_heads, max_splits,
// partial_floats], whatever each token uses.
struct AttentionPlan {
    std::vector<int> splits;  // [m]
    int max_splits = 1;
    std::vector<RowRun> runs;

    // forced_splits > 0: every token that many (the tests); share_rows false: every row alone (the fused step's
    // few-token mode, whose rows take their own new key and value from their thread).
    AttentionPlan(const int64_t* block_tables, int64_t block_table_stride, const int64_t* context_lens, int m,
                  int block_size, int num_threads, int forced_splits, bool share_rows);

    int items() const { return static_cast<int>(runs.size()) * max_splits; }

    // Item `index` over queries at q + t * q_stride of token t and the partials above; false when its split lies
    // past its rows' own count (nothing to do).
    bool item(int index, const float* q, int64_t q_stride, const int64_t* context_lens, float* partials,
              int num_kv_heads, int per_item, AttentionItem* out) const;
};

// Stores x [head_dim] as one row of `dtype` at dst (head_dim a multiple of 8).
void store_kv_row(const float* x, KVDtype dtype, int head_dim, uint8_t* dst);

// Split `split` of `splits` of every row's context (the same split count for all rows), for every kv head: the
// partial results of softmax(scale * q K^T) V over the split's positions, to their places in `rows`. ctx's
// context_len is the longest row's; its new_keys / new_values (the new token's rows at hand) only for one row.
// One call reads the rows of all kv heads, which lie side by side in the cache, in address order.
void attend_split(AttentionIsa isa, const AttentionRows& rows, const PagedKV& ctx, int group, int head_dim,
                  float scale, int split, int splits, AttentionScratch& scratch);

// out [group, head_dim] = the softmax-weighted values of the whole context, from its `splits` partials.
void merge_splits(const float* partials, int splits, int group, int head_dim, float* out);

}  // namespace ember
