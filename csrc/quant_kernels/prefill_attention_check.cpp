// check_prefill_attention (prefill_attention.h): plain C++, compiled without SIMD flags so it runs on any CPU
// before an ISA is chosen.
#include "prefill_attention.h"

namespace ember {

const char* check_prefill_attention(const PrefillAttention& p) {
    if (p.num_seqs <= 0 || p.num_heads <= 0 || p.num_kv_heads <= 0 || p.block_size <= 0 || p.num_cache_blocks <= 0) {
        return "prefill_attention needs sequences, heads, kv heads, a block size and cache blocks";
    }
    if (p.num_heads % p.num_kv_heads != 0) return "prefill_attention: num_heads is not a multiple of num_kv_heads";
    if (p.head_dim <= 0 || p.head_dim % 8 != 0) return "prefill_attention: head_dim must be a positive multiple of 8";
    for (int s = 0; s < p.num_seqs; ++s) {
        const int64_t query_len = p.query_lens[s];
        const int64_t context_len = p.context_lens[s];
        if (query_len <= 0 || context_len < query_len || p.query_starts[s] < 0) {
            return "prefill_attention: each sequence needs 0 < query_len <= context_len and a start row";
        }
        const int64_t blocks = (context_len + p.block_size - 1) / p.block_size;
        if (blocks > p.block_table_stride) return "prefill_attention: a context is longer than its block table";
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t block = p.block_tables[s * p.block_table_stride + b];
            if (block < 0 || block >= p.num_cache_blocks) return "prefill_attention: a block id is outside the cache";
        }
    }
    return nullptr;
}

}  // namespace ember
