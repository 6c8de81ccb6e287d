// Causal attention of prefill chunks over the paged KV cache (the chunk's own keys and values already stored in
// it): query tiles x key tiles with an online softmax, key tiles past a query tile's last position skipped, K and V
// rows read straight from the blocks in their stored dtype (kv_format.h). One work item is one query tile of one
// sequence for one kv head, so each key and value tile serves every query head of its group; the items are spread
// over OpenMP threads, costliest (latest in the sequence) first.
#pragma once

#include <cstdint>

#include "kv_format.h"

namespace ember {

struct PrefillAttention {
    const float* q;  // [T, num_heads, head_dim], the new tokens' queries after rope
    float* out;      // [T, num_heads, head_dim]
    // [num_cache_blocks, block_size, num_kv_heads, row_bytes] each, rows in `dtype`
    const uint8_t* key_cache;
    const uint8_t* value_cache;
    int64_t num_cache_blocks;
    const int64_t* block_tables;  // [num_seqs, block_table_stride] physical block of each block_size positions
    int64_t block_table_stride;
    const int64_t* query_starts;  // [num_seqs] the row of q / out where each sequence's chunk starts
    const int64_t* query_lens;    // [num_seqs] tokens of each chunk
    const int64_t* context_lens;  // [num_seqs] positions cached after this step, the chunk's own included
    int num_seqs;
    int num_heads;
    int num_kv_heads;
    int head_dim;  // a multiple of 8
    int block_size;
    KVDtype dtype;
    float scale;
};

// nullptr when `p` is consistent (its shapes, and every block id it will read inside the cache), else the reason.
const char* check_prefill_attention(const PrefillAttention& p);

// The whole batch on `num_threads` threads with AVX2 + FMA + F16C.
void prefill_attention_avx2(const PrefillAttention& p, int num_threads);

#if defined(EMBER_HAVE_AVX512_VNNI)
// The same with AVX-512 F registers (16 lanes, 32 registers: larger register blocks for the two tile products).
void prefill_attention_avx512(const PrefillAttention& p, int num_threads);
#endif

}  // namespace ember
