// decode_attention.h: how a step's attention is cut into work items: the splits of a context, where they fall,
// and which rows share an item; and the scratch an item computes in.
#include <algorithm>
#include <vector>

#include "decode_attention.h"
#include "decode_attention_tile.h"

namespace ember {

namespace {

constexpr int kMinSplitLen = 256;  // below this a split's fixed cost (its merge) outweighs the extra thread
// One long sequence alone then has 16 items (times its kv heads) for dynamic scheduling to share out.
constexpr int kMaxSplits = 16;

// Whether rows a and b read the same blocks: equal block table entries up to the longer context.
bool same_blocks(const int64_t* a, const int64_t* b, int64_t len_a, int64_t len_b, int block_size) {
    const int64_t used = (std::max(len_a, len_b) + block_size - 1) / block_size;
    return a == b || std::equal(a, a + used, b);
}

bool same_split_layout(int64_t len_a, int64_t len_b, int splits) {
    for (int s = 1; s < splits; ++s) {
        if (split_bound(len_a, s, splits) != split_bound(len_b, s, splits)) return false;
    }
    return true;
}

}  // namespace

AttentionScratch::AttentionScratch(int group)
    : scores(static_cast<size_t>(kMaxRunRows) * group * kTile),
      queries(static_cast<size_t>(kMaxRunRows) * group),
      score_rows(static_cast<size_t>(kMaxRunRows) * group),
      accumulators(static_cast<size_t>(kMaxRunRows) * group),
      score_queries(static_cast<size_t>(kMaxRunRows) * group) {}

int attention_splits(int64_t context_len) {
    return static_cast<int>(std::clamp<int64_t>(context_len / kMinSplitLen, 1, kMaxSplits));
}

int split_bound(int64_t context_len, int split, int splits) {
    if (split <= 0) return 0;
    if (split >= splits) return static_cast<int>(context_len);
    return static_cast<int>(context_len * split / splits / kTile * kTile);
}

AttentionPlan::AttentionPlan(const int64_t* block_tables, int64_t block_table_stride, const int64_t* context_lens,
                             int m, int block_size, int num_threads, int forced_splits, bool share_rows)
    : splits(static_cast<size_t>(m)) {
    for (int t = 0; t < m; ++t) {
        splits[t] = forced_splits > 0 ? forced_splits : attention_splits(context_lens[t]);
        max_splits = std::max(max_splits, splits[t]);
    }
    const int max_rows =
        share_rows ? std::clamp(m * max_splits / (2 * std::max(1, num_threads)), 1, kMaxRunRows) : 1;
    for (int t = 0; t < m; ++t) {
        if (!runs.empty()) {
            RowRun& last = runs.back();
            const int u = last.first;  // a run's rows all match its first
            if (last.rows < max_rows && splits[t] == splits[u] &&
                same_split_layout(context_lens[t], context_lens[u], splits[t]) &&
                same_blocks(block_tables + t * block_table_stride, block_tables + u * block_table_stride,
                            context_lens[t], context_lens[u], block_size)) {
                ++last.rows;
                continue;
            }
        }
        runs.push_back(RowRun{t, 1});
    }
}

bool AttentionPlan::item(int index, const float* q, int64_t q_stride, const int64_t* context_lens, float* partials,
                         int num_kv_heads, int per_item, AttentionItem* out) const {
    const RowRun run = runs[index / max_splits];
    const int split = index % max_splits;
    const int t = run.first;
    if (split >= splits[t]) return false;  // a shorter context than the batch's longest
    const int64_t token_floats = static_cast<int64_t>(num_kv_heads) * max_splits * per_item;
    *out = AttentionItem{run,
                         split,
                         splits[t],
                         static_cast<int>(*std::max_element(context_lens + t, context_lens + t + run.rows)),
                         AttentionRows{q + t * q_stride, q_stride, context_lens + t, run.rows,
                                       partials + t * token_floats + static_cast<int64_t>(split) * per_item,
                                       token_floats, static_cast<int64_t>(max_splits) * per_item}};
    return true;
}

}  // namespace ember
