// decode_attention_batch.h: the fused step's attention phase, alone.
#include "decode_attention_batch.h"

#include <algorithm>
#include <vector>

namespace ember {

namespace {

AttentionPlan plan_of(const AttentionBatch& b, int num_threads, int splits) {
    return AttentionPlan(b.block_tables, b.block_table_stride, b.context_lens, b.m, b.block_size, num_threads, splits,
                         true);
}

}  // namespace

std::vector<int> decode_attention_runs(const AttentionBatch& b, int num_threads, int splits) {
    std::vector<int> rows;
    for (const RowRun& run : plan_of(b, num_threads, splits).runs) rows.push_back(run.rows);
    return rows;
}

void decode_attention_batch(const AttentionBatch& b, AttentionIsa isa, int num_threads, int splits) {
    const AttentionPlan plan = plan_of(b, num_threads, splits);
    const int group = b.num_heads / b.num_kv_heads;
    const int per_item = partial_floats(group, b.head_dim);
    std::vector<float> partials(static_cast<size_t>(b.m) * b.num_kv_heads * plan.max_splits * per_item);
    const int64_t row_bytes = kv_row_bytes(b.dtype, b.head_dim);
#pragma omp parallel num_threads(num_threads)
    {
        AttentionScratch scratch(group);
        AttentionItem item;
#pragma omp for schedule(dynamic, 1)
        for (int index = 0; index < plan.items(); ++index) {
            if (!plan.item(index, b.q, static_cast<int64_t>(b.num_heads) * b.head_dim, b.context_lens,
                           partials.data(), b.num_kv_heads, per_item, &item)) {
                continue;
            }
            const PagedKV ctx{b.key_cache, b.value_cache, b.block_tables + item.run.first * b.block_table_stride,
                              b.block_size, b.num_kv_heads, b.dtype, row_bytes, item.longest, nullptr, nullptr};
            attend_split(isa, item.rows, ctx, group, b.head_dim, b.scale, item.split, item.splits, scratch);
        }
#pragma omp for schedule(static)
        for (int token_head = 0; token_head < b.m * b.num_kv_heads; ++token_head) {
            merge_splits(partials.data() + static_cast<size_t>(token_head) * plan.max_splits * per_item,
                         plan.splits[token_head / b.num_kv_heads], group, b.head_dim,
                         b.out + static_cast<size_t>(token_head) * group * b.head_dim);
        }
    }
}

}  // namespace ember
