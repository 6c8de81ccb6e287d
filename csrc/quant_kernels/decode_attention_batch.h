// The decode attention on its own, outside the fused step: m query tokens over the paged cache, their (token,
// kv head, split) items shared by the threads as the step shares them, then merged. For the tests (each
// instruction set and KV format against the fp32 reference) and the attention benchmark.
#pragma once

#include <cstdint>
#include <vector>

#include "decode_attention.h"

namespace ember {

struct AttentionBatch {
    int m;
    int num_heads;
    int num_kv_heads;
    int head_dim;
    float scale;
    const float* q;               // [m, num_heads, head_dim]
    const uint8_t* key_cache;     // [num_blocks, block_size, num_kv_heads, row_bytes]
    const uint8_t* value_cache;
    const int64_t* block_tables;  // [m, block_table_stride]
    int64_t block_table_stride;
    const int64_t* context_lens;  // [m], each >= 1
    int block_size;
    KVDtype dtype;
    float* out;                   // [m, num_heads, head_dim]
};

// `splits` <= 0: each token as many as attention_splits gives.
void decode_attention_batch(const AttentionBatch& b, AttentionIsa isa, int num_threads, int splits);

// The rows of each work item's run (AttentionPlan) decode_attention_batch would use: for the tests, which check
// that the rows of one sequence do share items.
std::vector<int> decode_attention_runs(const AttentionBatch& b, int num_threads, int splits);

}  // namespace ember
