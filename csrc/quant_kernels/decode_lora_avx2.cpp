// LoRA products inside the fused decode step (decode_lora.h), AVX2 + FMA. Called only after the run-time CPU
// check, from inside the step's OpenMP parallel region.
#include "decode_lora.h"

#include <immintrin.h>

#include <algorithm>

#include "decode_ops.h"
#include "decode_step.h"
#include "simd_avx2.h"

namespace ember {

namespace {

// Output columns of Bs^T a pass covers: its [rank, 64] slice stays in L1 while the adapter's rows go by.
constexpr int kDeltaColumns = 64;
// A projection feeds at most three modules (q|k|v), so t holds three rank-wide slices per row.
constexpr int kMaxModulesPerProjection = 3;

struct ProjectionModules {
    int first;  // LoraModule of its first column range
    int count;
};

ProjectionModules modules_of(LoraProjection projection) {
    switch (projection) {
        case LoraProjection::kQkv: return {static_cast<int>(LoraModule::kQ), 3};
        case LoraProjection::kO: return {static_cast<int>(LoraModule::kO), 1};
        case LoraProjection::kGateUp: return {static_cast<int>(LoraModule::kGate), 2};
        case LoraProjection::kDown: return {static_cast<int>(LoraModule::kDown), 1};
    }
    return {0, 0};
}

inline float dot(const float* x, const float* y, int n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
    float sum = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < n; ++i) sum += x[i] * y[i];
    return sum;
}

// out[c0, c1) = sum_k t[k] * sB^T[k, c0 .. c1) for one row. sB^T is stored in blocks of 8 columns,
// [width / 8, rank, 8], so the values one 8-column pass needs are contiguous. Every module width is a multiple of
// 8: each is some quantized projection's in_features (a multiple of its block) or kv heads x head_dim (head_dim
// a multiple of 8), as check_decode_tables makes sure.
inline void low_rank_row(const float* t, const float* blocks, int rank, int c0, int c1, float* out) {
    for (int c = c0; c < c1; c += 8) {
        const float* block = blocks + static_cast<size_t>(c / 8) * rank * 8;
        __m256 acc = _mm256_setzero_ps();
        for (int k = 0; k < rank; ++k) acc = _mm256_fmadd_ps(_mm256_set1_ps(t[k]), _mm256_loadu_ps(block + 8 * k), acc);
        _mm256_storeu_ps(out + c, acc);
    }
}

const LoraWeights* adapter_table(const DecodeLora& lora, int adapter) {
    return reinterpret_cast<const LoraWeights*>(lora.adapters[adapter]);
}

}  // namespace

const char* check_decode_lora(const DecodeDims& d, int m, const DecodeLora& lora) {
    if (lora.num_adapters < 1 || lora.adapters == nullptr || lora.row_adapter == nullptr) {
        return "a LoRA step needs at least one adapter table and a row index";
    }
    for (int t = 0; t < m; ++t) {
        if (lora.row_adapter[t] < -1 || lora.row_adapter[t] >= lora.num_adapters) {
            return "a row's adapter index lies outside the adapter tables";
        }
    }
    for (int i = 0; i < lora.num_adapters; ++i) {
        const LoraWeights* table = adapter_table(lora, i);
        if (table == nullptr) return "an adapter table is missing";
        for (int entry = 0; entry < d.num_layers * kLoraModules; ++entry) {
            const LoraWeights& w = table[entry];
            if (w.a == 0 && w.bs_t == 0 && w.rank == 0) continue;
            if (w.a == 0 || w.bs_t == 0 || w.rank < 1 || w.rank > kMaxLoraRank) {
                return "an adapter table entry needs both weights and a rank of 1 to 256";
            }
        }
    }
    return nullptr;
}

LoraStep::LoraStep(const DecodeDims& dims, int m, const DecodeLora& lora, int input_copies, int num_threads)
    : dims_(dims), lora_(lora), row_adapter_(lora.row_adapter), max_rank_(1) {
    for (int adapter = 0; adapter < lora.num_adapters; ++adapter) {
        const size_t first = rows_.size();
        for (int t = 0; t < m; ++t) {
            if (lora.row_adapter[t] == adapter) rows_.push_back(t);
        }
        if (rows_.size() == first) continue;  // an adapter without rows this step costs nothing
        group_adapter_.push_back(adapter);
        group_start_.push_back(static_cast<int>(first));
        const LoraWeights* table = adapter_table(lora, adapter);
        for (int entry = 0; entry < dims.num_layers * kLoraModules; ++entry) {
            max_rank_ = std::max(max_rank_, static_cast<int>(table[entry].rank));
        }
    }
    group_start_.push_back(static_cast<int>(rows_.size()));
    input_width_ = std::max(dims.hidden, dims.intermediate);
    wide_width_ = std::max((dims.num_heads + 2 * dims.num_kv_heads) * dims.head_dim, 2 * dims.intermediate);
    t_.assign(static_cast<size_t>(m) * kMaxModulesPerProjection * max_rank_, 0.0f);
    wide_.assign(static_cast<size_t>(m) * wide_width_, 0.0f);
    narrow_.assign(static_cast<size_t>(m) * dims.hidden, 0.0f);
    inputs_.assign(input_copies, std::vector<float>(static_cast<size_t>(m) * input_width_));
    gate_up_.assign(num_threads, std::vector<float>(static_cast<size_t>(2) * dims.intermediate));
}

const LoraWeights& LoraStep::weights(int adapter, int layer, int module) const {
    return adapter_table(lora_, adapter)[layer * kLoraModules + module];
}

// q|k|v and gate|up use the wide buffer, o and down the narrow one: consecutive projections never share one.
float* LoraStep::deltas(LoraProjection projection, int t) {
    const bool wide = projection == LoraProjection::kQkv || projection == LoraProjection::kGateUp;
    return wide ? wide_.data() + static_cast<size_t>(t) * wide_width_
                : narrow_.data() + static_cast<size_t>(t) * dims_.hidden;
}

int LoraStep::module_width(int module) const {
    switch (static_cast<LoraModule>(module)) {
        case LoraModule::kQ: return dims_.num_heads * dims_.head_dim;
        case LoraModule::kK:
        case LoraModule::kV: return dims_.num_kv_heads * dims_.head_dim;
        case LoraModule::kGate:
        case LoraModule::kUp: return dims_.intermediate;
        case LoraModule::kO:
        case LoraModule::kDown: return dims_.hidden;
    }
    return 0;
}

int LoraStep::module_in(int module) const {
    switch (static_cast<LoraModule>(module)) {
        case LoraModule::kO: return dims_.num_heads * dims_.head_dim;
        case LoraModule::kDown: return dims_.intermediate;
        default: return dims_.hidden;
    }
}

void LoraStep::run(int layer, LoraProjection projection, const float* x, int ldx) {
    const ProjectionModules modules = modules_of(projection);
    const int groups = static_cast<int>(group_adapter_.size());
    // One item per (adapter, module): it reads that A and B once for all the adapter's rows.
#pragma omp for schedule(dynamic, 1) nowait
    for (int item = 0; item < groups * modules.count; ++item) {
        const int group = item / modules.count, slot = item % modules.count;
        const int module = modules.first + slot;
        const LoraWeights& w = weights(group_adapter_[group], layer, module);
        if (w.rank == 0) continue;
        const int rank = static_cast<int>(w.rank), in = module_in(module), width = module_width(module);
        int offset = 0;  // the module's first column in the projection's output
        for (int before = modules.first; before < module; ++before) offset += module_width(before);
        const float* a = reinterpret_cast<const float*>(w.a);        // [rank, in]
        const float* bs_t = reinterpret_cast<const float*>(w.bs_t);  // [width / 8, rank, 8]
        const int* first = rows_.data() + group_start_[group];
        const int* last = rows_.data() + group_start_[group + 1];
        for (int k = 0; k < rank; ++k) {
            for (const int* row = first; row != last; ++row) {
                float* t = t_.data() + (static_cast<size_t>(*row) * kMaxModulesPerProjection + slot) * max_rank_;
                t[k] = dot(x + static_cast<size_t>(*row) * ldx, a + static_cast<size_t>(k) * in, in);
            }
        }
        for (int c0 = 0; c0 < width; c0 += kDeltaColumns) {
            const int c1 = std::min(width, c0 + kDeltaColumns);
            for (const int* row = first; row != last; ++row) {
                const float* t = t_.data() + (static_cast<size_t>(*row) * kMaxModulesPerProjection + slot) * max_rank_;
                low_rank_row(t, bs_t, rank, c0, c1, deltas(projection, *row) + offset);
            }
        }
    }
}

void LoraStep::add(int layer, LoraProjection projection, int t, float* y_row) {
    const int adapter = static_cast<int>(row_adapter_[t]);
    if (adapter < 0) return;
    const ProjectionModules modules = modules_of(projection);
    const float* delta = deltas(projection, t);
    int offset = 0;
    for (int module = modules.first; module < modules.first + modules.count; ++module) {
        const int width = module_width(module);
        if (weights(adapter, layer, module).rank != 0) add_row(y_row + offset, delta + offset, width);
        offset += width;
    }
}

const float* LoraStep::gate_up_with_deltas(int layer, int thread, int t, const float* gate_up_row) {
    const int adapter = static_cast<int>(row_adapter_[t]);
    if (adapter < 0) return gate_up_row;
    const int gate = static_cast<int>(LoraModule::kGate), up = static_cast<int>(LoraModule::kUp);
    if (weights(adapter, layer, gate).rank == 0 && weights(adapter, layer, up).rank == 0) return gate_up_row;
    float* row = gate_up_[thread].data();
    std::copy(gate_up_row, gate_up_row + 2 * dims_.intermediate, row);
    add(layer, LoraProjection::kGateUp, t, row);
    return row;
}

}  // namespace ember
