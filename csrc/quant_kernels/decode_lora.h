// LoRA adapters inside the fused decode step: rows of one step may each name an adapter (or none, the base
// model), and after every projection an adapter targets, its rows get (x @ A^T) @ (scaling * B)^T added to the
// module's output columns. The low-rank products run batched per adapter: each adapter's A and B are read once a
// step for all of its rows.
//
// No barrier of their own: one work item per (adapter, module) computes t = x @ A^T and delta = t @ Bs^T for the
// adapter's rows into a delta buffer; the items share the base projection's work-sharing loop (its barrier
// ends both), and the row phase after it adds each row's deltas where it reads the projection's output. Two
// delta buffers alternate between consecutive projections, so a thread may start the next projection's items
// while another still reads the previous deltas.
//
// The tables are int64 arrays Python fills once per adapter (pointers into fp32 tensors it keeps alive).
#pragma once

#include <cstddef>
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
    int64_t bs_t;  // float [out / 8, rank, 8]: (scaling * lora_B)^T in blocks of 8 columns
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

// One step's LoRA state: the rows of each adapter, the low-rank activations, the deltas, and the fp32 projection
// inputs (the kernels see them only quantized; the adapters take them exact, as the module path does).
class LoraStep {
public:
    // input_copies: one input buffer per thread when every thread keeps its own rows, else 1 (shared).
    LoraStep(const DecodeDims& dims, int m, const DecodeLora& lora, int input_copies, int num_threads);

    // Where thread `copy`'s fp32 input row t of the next projection goes (normed or gated, before quantizing).
    float* input_row(int copy, int t) { return inputs_[copy].data() + static_cast<size_t>(t) * input_width_; }
    const float* inputs(int copy) const { return inputs_[copy].data(); }
    int input_width() const { return input_width_; }

    // Inside a parallel region, before the base projection's work-sharing loops (nowait, so the projection's
    // barrier ends them): every adapter's deltas for the projection's modules, x [m, ldx] its fp32 inputs.
    void run(int layer, LoraProjection projection, const float* x, int ldx);

    // After that barrier: y_row (row t of the projection's output, modules side by side; or the residual row for
    // o and down) += row t's deltas. Nothing for a base-model row or a module its adapter leaves alone.
    void add(int layer, LoraProjection projection, int t, float* y_row);

    // Row t of the gate|up output with its deltas: gate_up_row itself when it has none, else a copy in
    // `thread`'s scratch (in the few-token mode every thread reads the shared row).
    const float* gate_up_with_deltas(int layer, int thread, int t, const float* gate_up_row);

private:
    const LoraWeights& weights(int adapter, int layer, int module) const;
    float* deltas(LoraProjection projection, int t);
    int module_width(int module) const;
    int module_in(int module) const;

    const DecodeDims& dims_;
    const DecodeLora& lora_;
    const int64_t* row_adapter_;
    int max_rank_;
    int input_width_;
    int wide_width_;                  // q|k|v and gate|up deltas share a buffer of this row width
    std::vector<int> group_adapter_;  // [groups] the adapter of each group of rows
    std::vector<int> group_start_;    // [groups + 1] its rows in rows_
    std::vector<int> rows_;           // the adapter rows, grouped by adapter
    std::vector<float> t_;            // [m, 3 (modules of a projection), max_rank] x @ A^T
    std::vector<float> wide_;         // [m, wide_width_] deltas of q|k|v, then of gate|up
    std::vector<float> narrow_;       // [m, hidden] deltas of o, then of down
    std::vector<std::vector<float>> inputs_;
    std::vector<std::vector<float>> gate_up_;  // per thread: [2 intermediate]
};

}  // namespace ember
