// decode_attention_batch.h: the fused step's attention phase, alone.
#include "decode_attention_batch.h"

#include <algorithm>
#include <vector>

namespace ember {

namespace {

// The batch's work as the fused step cuts it: each token's splits (the given count, or with splits <= 0 its own),
// the most any token has (the partials' stride) and the runs of rows that share work items.
struct BatchPlan {
    std::vector<int> splits;
    int max_splits;
    std::vector<RowRun> runs;

    BatchPlan(const AttentionBatch& b, int num_threads, int forced_splits) : splits(static_cast<size_t>(b.m)) {
        for (int t = 0; t < b.m; ++t) splits[t] = forced_splits > 0 ? forced_splits : attention_splits(b.context_lens[t]);
        max_splits = std::max(1, *std::max_element(splits.begin(), splits.end()));
        runs = plan_row_runs(b.block_tables, b.block_table_stride, b.context_lens, splits.data(), b.m, b.block_size,
                             run_rows_for(b.m, max_splits, num_threads));
    }
};

}  // namespace

std::vector<int> decode_attention_runs(const AttentionBatch& b, int num_threads, int splits) {
    const BatchPlan plan(b, num_threads, splits);
    std::vector<int> rows;
    for (const RowRun& run : plan.runs) rows.push_back(run.rows);
    return rows;
}

void decode_attention_batch(const AttentionBatch& b, AttentionIsa isa, int num_threads, int splits) {
    // The partials are laid out [m, num_kv_heads, max_splits, per_item] whatever each token uses.
    const BatchPlan plan(b, num_threads, splits);
    const std::vector<int>& token_splits = plan.splits;
    const std::vector<RowRun>& runs = plan.runs;
    const int max_splits = plan.max_splits;
    const int group = b.num_heads / b.num_kv_heads;
    const int per_item = partial_floats(group, b.head_dim);
    const int64_t token_floats = static_cast<int64_t>(b.num_kv_heads) * max_splits * per_item;
    std::vector<float> partials(static_cast<size_t>(b.m * token_floats));
    const int64_t row_bytes = kv_row_bytes(b.dtype, b.head_dim);
    const int items = static_cast<int>(runs.size()) * max_splits;
#pragma omp parallel num_threads(num_threads)
    {
        AttentionScratch scratch(group);
#pragma omp for schedule(dynamic, 1)
        for (int item = 0; item < items; ++item) {
            const RowRun run = runs[item / max_splits];
            const int split = item % max_splits;
            if (split >= token_splits[run.first]) continue;
            const int t = run.first;
            const PagedKV ctx{b.key_cache, b.value_cache, b.block_tables + t * b.block_table_stride, b.block_size,
                              b.num_kv_heads, b.dtype, row_bytes,
                              static_cast<int>(*std::max_element(b.context_lens + t, b.context_lens + t + run.rows)),
                              nullptr, nullptr};
            const AttentionRows rows{b.q + static_cast<size_t>(t) * b.num_heads * b.head_dim,
                                     static_cast<int64_t>(b.num_heads) * b.head_dim,
                                     b.context_lens + t,
                                     run.rows,
                                     partials.data() + t * token_floats + static_cast<int64_t>(split) * per_item,
                                     token_floats,
                                     static_cast<int64_t>(max_splits) * per_item};
            attend_split(isa, rows, ctx, group, b.head_dim, b.scale, split, token_splits[t], scratch);
        }
#pragma omp for schedule(static)
        for (int token_head = 0; token_head < b.m * b.num_kv_heads; ++token_head) {
            merge_splits(partials.data() + static_cast<size_t>(token_head) * max_splits * per_item,
                         token_splits[token_head / b.num_kv_heads], group, b.head_dim,
                         b.out + static_cast<size_t>(token_head) * group * b.head_dim);
        }
    }
}

}  // namespace ember
