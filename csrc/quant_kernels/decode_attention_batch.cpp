// decode_attention_batch.h: the fused step's attention phase, alone.
#include "decode_attention_batch.h"

#include <algorithm>
#include <vector>

namespace ember {

void decode_attention_batch(const AttentionBatch& b, AttentionIsa isa, int num_threads, int splits) {
    // Token t's splits: the given count, or (splits <= 0) its own as the fused step cuts them; the partials are
    // laid out [m, num_kv_heads, max_splits, per_item] whatever each token uses.
    const auto token_splits = [&](int t) { return splits > 0 ? splits : attention_splits(b.context_lens[t]); };
    int max_splits = 1;
    for (int t = 0; t < b.m; ++t) max_splits = std::max(max_splits, token_splits(t));
    const int group = b.num_heads / b.num_kv_heads;
    const int per_item = partial_floats(group, b.head_dim);
    const int items = b.m * max_splits;
    std::vector<float> partials(static_cast<size_t>(items) * b.num_kv_heads * per_item);
    const int64_t row_bytes = kv_row_bytes(b.dtype, b.head_dim);
#pragma omp parallel num_threads(num_threads)
    {
        std::vector<float> scratch(static_cast<size_t>(attention_scratch_floats(group)));
#pragma omp for schedule(dynamic, 1)
        for (int item = 0; item < items; ++item) {
            const int split = item % max_splits;
            const int t = item / max_splits;
            if (split >= token_splits(t)) continue;
            const PagedKV ctx{b.key_cache, b.value_cache, b.block_tables + t * b.block_table_stride, b.block_size,
                              b.num_kv_heads, b.dtype, row_bytes, static_cast<int>(b.context_lens[t]), nullptr,
                              nullptr};
            const float* q = b.q + static_cast<size_t>(t) * b.num_heads * b.head_dim;
            float* token_partials =
                partials.data() + static_cast<size_t>(t) * b.num_kv_heads * max_splits * per_item;
            attend_split(isa, q, ctx, group, b.head_dim, b.scale, split, token_splits(t), scratch.data(),
                         token_partials + static_cast<size_t>(split) * per_item,
                         static_cast<int64_t>(max_splits) * per_item);
        }
#pragma omp for schedule(static)
        for (int token_head = 0; token_head < b.m * b.num_kv_heads; ++token_head) {
            merge_splits(partials.data() + static_cast<size_t>(token_head) * max_splits * per_item,
                         token_splits(token_head / b.num_kv_heads), group, b.head_dim,
                         b.out + static_cast<size_t>(token_head) * group * b.head_dim);
        }
    }
}

}  // namespace ember
