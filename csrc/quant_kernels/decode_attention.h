// Flash-decoding of new tokens over the paged KV cache, for the fused decode step: one work item is one token
// and one split (a range of context positions), for every kv head. It reads every key and value row of its
// range once for all the query heads of the row's group, keeps an online softmax (running max and sum), and
// leaves an unnormalised partial result; merge_splits joins a token's splits with their log-sum-exp weights.
// Splitting the context lets one long sequence use every thread. Runs on AVX2 + FMA + F16C (8 floats a
// register) or AVX-512 (16), chosen per step (AttentionIsa); the bodies are one template
// (decode_attention_body.h).
#pragma once

#include <cstdint>

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

// Floats of the scratch attend_split needs.
int attention_scratch_floats(int group);

// How many splits a token's context is cut into: one per kMinSplitLen positions, at most kMaxSplits. It depends
// on the token's own context length alone, never on what else shares the step or on the thread count, so a
// token's attention sums in the same order in any batch: speculative verification's rows (k + 1 new tokens of
// one sequence in one step) give exactly what decoding them one by one gives.
int attention_splits(int64_t context_len);

// Stores x [head_dim] as one row of `dtype` at dst (head_dim a multiple of 8).
void store_kv_row(const float* x, KVDtype dtype, int head_dim, uint8_t* dst);

// Split `split` of `splits` of the context, for every kv head: q [num_kv_heads * group, head_dim] holds the
// token's query heads, kv head h's group at q + h * group * head_dim; kv head h's partial result (see
// partial_floats) of softmax(scale * q K^T) V over the split's positions goes to partials + h * head_stride.
// One call reads the rows of all kv heads, which lie side by side in the cache, in address order.
void attend_split(AttentionIsa isa, const float* q, const PagedKV& ctx, int group, int head_dim, float scale,
                  int split, int splits, float* scratch, float* partials, int64_t head_stride);

// out [group, head_dim] = the softmax-weighted values of the whole context, from its `splits` partials.
void merge_splits(const float* partials, int splits, int group, int head_dim, float* out);

}  // namespace ember
