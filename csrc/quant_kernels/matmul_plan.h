// How one matmul's work is cut into items that OpenMP threads take from a shared counter.
//
// An item is (token block, chunk of row groups) rather than one fixed share per thread: on a shared machine a
// thread that loses its core for a time slice then delays the call by one item, not by half the matmul.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "quant_layout.h"

namespace ember {

constexpr int kTokenBlock = 64;     // activations of a token block stay in L2 while a group's weights stay in L1
constexpr int kItemsPerThread = 8;  // granularity of the dynamic hand-out

struct WorkPlan {
    int m;
    int token_blocks;
    int group_chunks;
    int groups_per_chunk;

    int items() const { return token_blocks * group_chunks; }

    // The slice of `base` (weight, output, activations) that work item `item` covers.
    MatmulSlice item_slice(MatmulSlice base, int item) const {
        const int tb = item / group_chunks;
        const int chunk = item % group_chunks;
        base.t_begin = tb * kTokenBlock;
        base.t_end = std::min(m, base.t_begin + kTokenBlock);
        base.g_begin = chunk * groups_per_chunk;
        base.g_end = std::min(row_groups(base.n), base.g_begin + groups_per_chunk);
        return base;
    }
};

// Storage for m activation rows of width k quantized per 32-value block; `acts` views it.
struct ActivationBuffer {
    std::unique_ptr<int8_t[]> q;
    std::unique_ptr<float[]> d;
    std::unique_ptr<float[]> s;
    QuantizedActs acts;

    ActivationBuffer(int m, int k)
        : q(new int8_t[static_cast<size_t>(m) * k]),
          d(new float[static_cast<size_t>(m) * (k / kBlock)]),
          s(new float[static_cast<size_t>(m) * (k / kBlock)]),
          acts{q.get(), d.get(), s.get(), k} {}

    // Row t alone, as a one-row QuantizedActs (for quantizing rows one by one from a scratch buffer).
    QuantizedActs row(int t) const {
        const size_t nb = static_cast<size_t>(acts.k / kBlock);
        return {acts.q + static_cast<size_t>(t) * acts.k, acts.d + t * nb, acts.s + t * nb, acts.k};
    }
};

inline WorkPlan plan_work(int m, int n, int num_threads) {
    const int groups = row_groups(n);
    const int token_blocks = (m + kTokenBlock - 1) / kTokenBlock;
    const int wanted_chunks = std::max(1, (kItemsPerThread * num_threads + token_blocks - 1) / token_blocks);
    // Even, so the AVX-512 kernels (two row groups per register) run no group alone except a matmul's last.
    const int groups_per_chunk = 2 * std::max(1, (groups + 2 * wanted_chunks - 1) / (2 * wanted_chunks));
    return {m, token_blocks, (groups + groups_per_chunk - 1) / groups_per_chunk, groups_per_chunk};
}

}  // namespace ember
