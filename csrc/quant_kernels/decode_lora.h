// LoRA adapters inside the fused decode step: rows of one step may each name an adapter (or none, the base
// model), and after every projection an adapter targets, its rows get (x @ A^T) @ (scaling * B)^T added to the
// module's output columns. The low-rank products run batched per adapter: each adapter's A and B are read once a
// step for all of its rows.
//
// The work of one projection is cut in two phases that sit beside the projection's own:
//   shrink  t[row, module] = x[row] @ A^T          work items shared with the base matmul (before its barrier)
//   expand  y[row, module columns] += t @ Bs^T      work items after the base matmul's barrier, then a barrier
// so an adapter costs one extra barrier per projection, and its weights are split over the threads.
//
// The tables are int64 arrays Python fills once per adapter (pointers into fp32 tensors it keeps alive).
#pragma once

#include <cstdint>
#include <vector>

namespace ember {

// The modules an adapter may target, in the order of an adapter table's columns.
enum class LoraModule : int { kQ = 0, kK, kV, kO, kGate, kUp, kDown };
constexpr int kLoraModules = 7;
constexpr int kMaxLoraRank = 256;  // a bound on the scratch a step allocates; PEFT adapters use 4-128

// One (layer, module) of an adapter. All zeros when the adapter leaves the module alone.
struct LoraWeights {
    int64_t a;     // float [rank, in]: lora_A
    int64_t bs_t;  // float [rank, out]: (scaling * lora_B)^T, so a row of t scales a contiguous row of it
    int64_t rank;
};
constexpr int kLoraWeightsFields = 3;
static_assert(sizeof(LoraWeights) == kLoraWeightsFields * sizeof(int64_t), "LoraWeights must be all int64");

// The adapters of one step: adapter i's table is LoraWeights[num_layers][kLoraModules] at adapters[i].
struct DecodeLora {
    int num_adapters;
    const int64_t* adapters;     // [num_adapters] addresses of the adapter tables
    const int64_t* row_adapter;  // [m] the adapter of each row, -1 for a base-model row
};

// The four fused projections of a layer, each a run of consecutive modules side by side in its output.
enum class LoraProjection : int { kQkv = 0, kO, kGateUp, kDown };

struct DecodeDims;

// Returns nullptr when every row's adapter index and every table entry is in range, else a message.
const char* check_decode_lora(const DecodeDims& dims, int m, const DecodeLora& lora);

// One step's LoRA state: the rows of each adapter, the low-rank activations t, and the fp32 projection inputs
// (the kernels see them only quantized; the adapters take them exact, as the module path does).
class LoraStep {
public:
    // input_copies: one input buffer per thread when every thread keeps its own rows, else 1 (shared).
    LoraStep(const DecodeDims& dims, int m, const DecodeLora& lora, int input_copies);

    // Where thread `copy`'s fp32 input row t of the next projection goes (normed or gated, before quantizing).
    float* input_row(int copy, int t);
    const float* inputs(int copy) const { return inputs_[copy].data(); }
    int input_width() const { return input_width_; }

    // Inside a parallel region, before the base projection's work-sharing loops (nowait): the A products of
    // every adapter row for the projection's modules, x [m, ldx] its fp32 inputs.
    void shrink(int layer, LoraProjection projection, const float* x, int ldx);

    // Inside a parallel region, after the base projection's barrier: adds the B products into y [m, ldy] (the
    // projection's output, modules side by side), then a barrier.
    void expand(int layer, LoraProjection projection, float* y, int ldy);

private:
    const LoraWeights& weights(int adapter, int layer, int module) const;
    int module_width(int module) const;
    int module_in(int module) const;

    const DecodeDims& dims_;
    const DecodeLora& lora_;
    int max_rank_;
    int input_width_;
    std::vector<int> group_adapter_;  // [groups] the adapter of each group of rows
    std::vector<int> group_start_;    // [groups + 1] its rows in rows_
    std::vector<int> rows_;           // the adapter rows, grouped by adapter
    std::vector<float> t_;            // [m, 3 (modules of a projection), max_rank]
    std::vector<std::vector<float>> inputs_;
};

}  // namespace ember
