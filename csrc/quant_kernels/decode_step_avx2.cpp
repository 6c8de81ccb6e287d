// The fused decode step (decode_step.h). Phases are OpenMP work-sharing loops inside one parallel region; the
// implicit barrier after each is the only synchronisation, so the threads stay hot from the first layer to the
// last. Row phases (norms, rope, gate) split tokens over threads; with one token one thread does them, which
// costs a microsecond; the matmuls and attention heads are what both threads share.
#include "decode_step.h"

#include <algorithm>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "decode_attention.h"
#include "decode_lora.h"
#include "decode_ops.h"
#include "kernel_isa.h"
#include "matmul_plan.h"
#include "quant_layout.h"

namespace ember {

namespace {

template <typename T>
inline T* ptr(int64_t address) {
    return reinterpret_cast<T*>(address);
}

const char* check_projection(const Projection& p, int k, int width) {
    if (p.num_parts < 1 || p.num_parts > kMaxProjectionParts) return "a projection has 1 to 3 parts";
    int64_t total = 0;
    for (int i = 0; i < p.num_parts; ++i) {
        QType qtype;
        if (!qtype_from_int(static_cast<int>(p.parts[i].qtype), &qtype)) return "unknown quantization type id";
        if (p.parts[i].data == 0 || p.parts[i].n <= 0) return "a projection part has no weight";
        if (k % raw_block_elems(qtype) != 0) return "in_features is not a multiple of the block size";
        total += p.parts[i].n;
    }
    return total == width ? nullptr : "a projection's parts do not add up to its output width";
}

// Every part of `p`: y[:, columns of the part] = acts @ W_part^T, items shared by all threads, then one barrier.
void run_projection(const Projection& p, const QuantizedActs& acts, float* y, int ldy, int m, int num_threads,
                    int isa_id) {
    Isa isa = Isa::Avx2;
    isa_from_int(isa_id, &isa);
    int column = 0;
    for (int i = 0; i < p.num_parts; ++i) {
        const ProjectionPart& part = p.parts[i];
        QType qtype;
        qtype_from_int(static_cast<int>(part.qtype), &qtype);
        const int n = static_cast<int>(part.n);
        const WorkPlan plan = plan_work(m, n, num_threads);
        const MatmulSlice base{qtype, ptr<const uint8_t>(part.data), n, acts.k, &acts, y + column, ldy, 0, 0, 0, 0};
#pragma omp for schedule(dynamic, 1) nowait
        for (int item = 0; item < plan.items(); ++item) matmul_slice_on(isa, plan.item_slice(base, item));
        column += n;
    }
#pragma omp barrier
}

// Where a step's adapters (decode_lora.h) join a layer: which thread's input copy they read.
struct LoraHook {
    LoraStep* step;  // nullptr: every row is the base model
    int copy;        // this thread's input rows (own-rows mode) or the shared ones (0)
    int thread;
    int layer;

    // The fp32 row a norm or gate writes before quantizing: kept for the adapters when there are any.
    float* row(float* scratch, int t) const { return step != nullptr ? step->input_row(copy, t) : scratch; }
    const float* inputs() const { return step != nullptr ? step->inputs(copy) : nullptr; }
    int input_width() const { return step != nullptr ? step->input_width() : 0; }
    // Row t's deltas of this layer's projection `which` added to y_row (its output row, or the residual's).
    void add(LoraProjection which, int t, float* y_row) const {
        if (step != nullptr) step->add(layer, which, t, y_row);
    }
    // At a layer's start, where the previous layer's down output joins the residual row x.
    void add_previous_down(int t, float* x) const {
        if (step != nullptr && layer > 0) step->add(layer - 1, LoraProjection::kDown, t, x);
    }
    const float* gate_up(int t, const float* row) const {
        return step != nullptr ? step->gate_up_with_deltas(layer, thread, t, row) : row;
    }
};

// run_projection, its work shared with the adapters' products of the same inputs (exact fp32 `lora_x`).
void project(const Projection& p, const QuantizedActs& acts, float* y, int ldy, int m, int num_threads, int isa_id,
             const LoraHook& lora, LoraProjection which, const float* lora_x, int ldx) {
    if (lora.step != nullptr) lora.step->run(lora.layer, which, lora_x, ldx);
    run_projection(p, acts, y, ldy, m, num_threads, isa_id);
}

// Up to this many tokens each thread does the row work itself (see run_layer_own_rows).
constexpr int kOwnRowsTokens = 4;

struct StepBuffers {
    AttentionPlan plan;               // the attention's work items, the same in every layer
    ActivationBuffer hidden_acts;     // [m, hidden] normed residual, quantized
    ActivationBuffer attention_acts;  // [m, q_width]
    ActivationBuffer gate_acts;       // [m, intermediate]
    std::vector<float> qkv;           // [m, q_width + 2 kv_width]
    std::vector<float> attention;     // [m, q_width]
    std::vector<float> partials;      // [m, num_kv_heads, plan.max_splits, partial_floats] attention splits
    std::vector<float> y;             // [m, hidden] output of o and down
    std::vector<float> gate_up;       // [m, 2 intermediate]

    // own_rows: the few-token mode, whose rows attend alone (each takes its new key and value from its thread).
    StepBuffers(const DecodeDims& d, const DecodeBatch& b, int num_threads, bool own_rows)
        : plan(b.block_tables, b.block_table_stride, b.context_lens, b.m, d.block_size, num_threads, 0, !own_rows),
          hidden_acts(b.m, d.hidden),
          attention_acts(b.m, d.num_heads * d.head_dim),
          gate_acts(b.m, d.intermediate),
          qkv(static_cast<size_t>(b.m) * (d.num_heads + 2 * d.num_kv_heads) * d.head_dim),
          attention(static_cast<size_t>(b.m) * d.num_heads * d.head_dim),
          partials(static_cast<size_t>(b.m) * d.num_kv_heads * plan.max_splits *
                   partial_floats(d.num_heads / d.num_kv_heads, d.head_dim)),
          y(static_cast<size_t>(b.m) * d.hidden),
          gate_up(static_cast<size_t>(b.m) * 2 * d.intermediate) {}
};

// Bias, per-head q/k norms and rope on token t's q|k|v row.
void finish_qkv_row(const LayerTable& layer, const DecodeDims& d, const DecodeBatch& b, float* row, int t) {
    const int q_width = d.num_heads * d.head_dim;
    const int kv_width = d.num_kv_heads * d.head_dim;
    if (layer.qkv_bias != 0) add_row(row, ptr<const float>(layer.qkv_bias), q_width + 2 * kv_width);
    const float* cos = b.cos + static_cast<size_t>(t) * d.head_dim;
    const float* sin = b.sin + static_cast<size_t>(t) * d.head_dim;
    for (int h = 0; h < d.num_heads + d.num_kv_heads; ++h) {
        float* head = row + h * d.head_dim;  // q heads, then k heads
        const int64_t norm = h < d.num_heads ? layer.q_norm : layer.k_norm;
        if (norm != 0) rms_norm_row(head, ptr<const float>(norm), d.head_dim, d.eps, head);
        rotate_half_row(head, cos, sin, d.head_dim);
    }
}

// A finished q|k|v row's keys and values, every kv head, stored as rows of the cache's dtype at keys and values
// ([num_kv_heads, row_bytes] each: a cache slot, or a thread's own copy of the new token's rows).
void store_token_kv(const DecodeDims& d, KVDtype dtype, const float* row, uint8_t* keys, uint8_t* values) {
    const int q_width = d.num_heads * d.head_dim;
    const int kv_width = d.num_kv_heads * d.head_dim;
    const int64_t row_bytes = kv_row_bytes(dtype, d.head_dim);
    for (int h = 0; h < d.num_kv_heads; ++h) {
        store_kv_row(row + q_width + h * d.head_dim, dtype, d.head_dim, keys + h * row_bytes);
        store_kv_row(row + q_width + kv_width + h * d.head_dim, dtype, d.head_dim, values + h * row_bytes);
    }
}

// Row widths of one layer and where its cache is.
struct LayerShape {
    int q_width;
    int qkv_width;
    KVDtype dtype;
    int64_t row_bytes;  // one stored head row
    uint8_t* key_cache;
    uint8_t* value_cache;
    AttentionIsa attention_isa = AttentionIsa::kAvx2;

    LayerShape(const DecodeDims& d, const DecodeBatch& b, int index)
        : q_width(d.num_heads * d.head_dim),
          qkv_width((d.num_heads + 2 * d.num_kv_heads) * d.head_dim),
          dtype(static_cast<KVDtype>(b.kv_dtype)),
          row_bytes(kv_row_bytes(dtype, d.head_dim)),
          key_cache(ptr<uint8_t>(b.kv_caches[2 * index])),
          value_cache(ptr<uint8_t>(b.kv_caches[2 * index + 1])) {
        attention_isa_from_int(d.attention_isa, d.head_dim, &attention_isa);  // checked by the caller
    }

    // Where token t's rows of every kv head go in a cache.
    uint8_t* slot_rows(uint8_t* cache, const DecodeDims& d, const DecodeBatch& b, int t) const {
        return cache + b.slots[t] * d.num_kv_heads * row_bytes;
    }
};

// Work item `index` of a layer's attention (AttentionPlan): one split of a run of rows (one token, or several of one
// sequence), for every kv head and its query heads, q from the tokens' finished q|k|v rows; the partial results
// go to their places in buf.partials. With `fresh_kv` ([m, 2, num_kv_heads, row_bytes], runs of one token only),
// the new token's key and value come from there rather than from the cache slot being written meanwhile.
void attend_item(const DecodeDims& d, const DecodeBatch& b, const LayerShape& shape, const float* qkv, int index,
                 const uint8_t* fresh_kv, AttentionScratch& scratch, StepBuffers& buf) {
    const int group = d.num_heads / d.num_kv_heads;
    AttentionItem item;
    if (!buf.plan.item(index, qkv, shape.qkv_width, b.context_lens, buf.partials.data(), d.num_kv_heads,
                       partial_floats(group, d.head_dim), &item)) {
        return;
    }
    const int t = item.run.first;
    const int64_t token_rows = static_cast<int64_t>(d.num_kv_heads) * shape.row_bytes;
    const uint8_t* fresh = fresh_kv == nullptr ? nullptr : fresh_kv + 2 * t * token_rows;
    const PagedKV ctx{shape.key_cache,
                      shape.value_cache,
                      b.block_tables + t * b.block_table_stride,
                      d.block_size,
                      d.num_kv_heads,
                      shape.dtype,
                      shape.row_bytes,
                      item.longest,
                      fresh,
                      fresh == nullptr ? nullptr : fresh + token_rows};
    attend_split(shape.attention_isa, item.rows, ctx, group, d.head_dim, d.scale, item.split, item.splits, scratch);
}

// Token t's attention row [q_width] from the partials of all its kv heads and splits.
void merge_token(const DecodeDims& d, const StepBuffers& buf, int t, float* out_row) {
    const int group = d.num_heads / d.num_kv_heads;
    const size_t per_head = static_cast<size_t>(buf.plan.max_splits) * partial_floats(group, d.head_dim);
    for (int h = 0; h < d.num_kv_heads; ++h) {
        const float* partials = buf.partials.data() + (static_cast<size_t>(t) * d.num_kv_heads + h) * per_head;
        merge_splits(partials, buf.plan.splits[t], group, d.head_dim,
                     out_row + h * group * d.head_dim);
    }
}

void norm_and_quantize(const float* x, int64_t weight, const DecodeDims& d, float* scratch, const QuantizedActs& acts) {
    rms_norm_row(x, ptr<const float>(weight), d.hidden, d.eps, scratch);
    quantize_rows_avx2(scratch, 0, 1, acts);
}

void gate_and_quantize(const float* gate_up, int inter, float* scratch, const QuantizedActs& acts) {
    silu_gate_row(gate_up, gate_up + inter, inter, scratch);
    quantize_rows_avx2(scratch, 0, 1, acts);
}

// What one thread owns during a step: scratch rows, and in the few-token mode its own residual stream,
// quantized activations and finished q|k|v rows.
struct ThreadState {
    std::vector<float> row;     // a normed or gated row before it is quantized
    AttentionScratch attention_scratch;
    std::vector<float> x;       // few-token mode: [m, hidden] residual stream
    std::vector<float> qkv;     // few-token mode: [m, qkv width] finished rows
    std::vector<float> attention;  // few-token mode: [m, q_width] merged attention rows
    std::vector<uint8_t> fresh_kv;  // few-token mode: [m, 2, num_kv_heads, row_bytes] the new tokens' stored rows
    std::unique_ptr<ActivationBuffer> hidden_acts, attention_acts, gate_acts;  // few-token mode

    ThreadState(const DecodeDims& d, const DecodeBatch& b, bool own_rows)
        : row(static_cast<size_t>(std::max(d.hidden, d.intermediate))),
          attention_scratch(d.num_heads / d.num_kv_heads) {
        if (!own_rows) return;
        x.assign(b.x, b.x + static_cast<size_t>(b.m) * d.hidden);
        qkv.resize(static_cast<size_t>(b.m) * (d.num_heads + 2 * d.num_kv_heads) * d.head_dim);
        attention.resize(static_cast<size_t>(b.m) * d.num_heads * d.head_dim);
        fresh_kv.resize(static_cast<size_t>(b.m) * 2 * d.num_kv_heads *
                        kv_row_bytes(static_cast<KVDtype>(b.kv_dtype), d.head_dim));
        hidden_acts.reset(new ActivationBuffer(b.m, d.hidden));
        attention_acts.reset(new ActivationBuffer(b.m, d.num_heads * d.head_dim));
        gate_acts.reset(new ActivationBuffer(b.m, d.intermediate));
    }
};

// Many tokens: row phases split the tokens over threads and share one copy of everything (10 barriers a layer).
void run_layer_shared(const LayerTable& layer, int index, const DecodeDims& d, const DecodeBatch& b,
                      StepBuffers& buf, ThreadState& own, int num_threads, const LoraHook& lora) {
    const LayerShape shape(d, b, index);
    const int m = b.m, hidden = d.hidden, q_width = shape.q_width, qkv_width = shape.qkv_width;
    const int inter = d.intermediate;

    // The previous layer's MLP output joins the residual stream here (the embeddings need nothing).
#pragma omp for schedule(static)
    for (int t = 0; t < m; ++t) {
        float* x = b.x + static_cast<size_t>(t) * hidden;
        if (index > 0) add_row(x, buf.y.data() + static_cast<size_t>(t) * hidden, hidden);
        lora.add_previous_down(t, x);
        norm_and_quantize(x, layer.input_norm, d, lora.row(own.row.data(), t), buf.hidden_acts.row(t));
    }
    project(layer.qkv, buf.hidden_acts.acts, buf.qkv.data(), qkv_width, m, num_threads, d.matmul_isa, lora, LoraProjection::kQkv,
            lora.inputs(), lora.input_width());
#pragma omp for schedule(static)
    for (int t = 0; t < m; ++t) {
        lora.add(LoraProjection::kQkv, t, buf.qkv.data() + static_cast<size_t>(t) * qkv_width);
        float* row = buf.qkv.data() + static_cast<size_t>(t) * qkv_width;
        finish_qkv_row(layer, d, b, row, t);
        store_token_kv(d, shape.dtype, row, shape.slot_rows(shape.key_cache, d, b, t),
                       shape.slot_rows(shape.value_cache, d, b, t));
    }
#pragma omp for schedule(dynamic, 1)
    for (int item = 0; item < buf.plan.items(); ++item) {
        attend_item(d, b, shape, buf.qkv.data(), item, nullptr, own.attention_scratch, buf);
    }
#pragma omp for schedule(static)
    for (int t = 0; t < m; ++t) {
        float* attention_row = buf.attention.data() + static_cast<size_t>(t) * q_width;
        merge_token(d, buf, t, attention_row);
        quantize_rows_avx2(attention_row, 0, 1, buf.attention_acts.row(t));
    }
    project(layer.o, buf.attention_acts.acts, buf.y.data(), hidden, m, num_threads, d.matmul_isa, lora, LoraProjection::kO,
            buf.attention.data(), q_width);
#pragma omp for schedule(static)
    for (int t = 0; t < m; ++t) {
        float* x = b.x + static_cast<size_t>(t) * hidden;
        add_row(x, buf.y.data() + static_cast<size_t>(t) * hidden, hidden);
        lora.add(LoraProjection::kO, t, x);
        if (layer.o_bias != 0) add_row(x, ptr<const float>(layer.o_bias), hidden);
        norm_and_quantize(x, layer.post_norm, d, lora.row(own.row.data(), t), buf.hidden_acts.row(t));
    }
    project(layer.gate_up, buf.hidden_acts.acts, buf.gate_up.data(), 2 * inter, m, num_threads, d.matmul_isa, lora,
            LoraProjection::kGateUp, lora.inputs(), lora.input_width());
#pragma omp for schedule(static)
    for (int t = 0; t < m; ++t) {
        gate_and_quantize(lora.gate_up(t, buf.gate_up.data() + static_cast<size_t>(t) * 2 * inter), inter,
                          lora.row(own.row.data(), t), buf.gate_acts.row(t));
    }
    project(layer.down, buf.gate_acts.acts, buf.y.data(), hidden, m, num_threads, d.matmul_isa, lora, LoraProjection::kDown,
            lora.inputs(), lora.input_width());
}

// Few tokens: every thread does the row work of all tokens on its own copies (microseconds, the same values
// everywhere), so only the matmuls and the attention need barriers: 5 a layer. One thread writes the cache;
// the attention takes the new key and value from the thread's own rows, so nobody waits for that write.
void run_layer_own_rows(const LayerTable& layer, int index, const DecodeDims& d, const DecodeBatch& b,
                        StepBuffers& buf, ThreadState& own, int num_threads, bool writes_cache,
                        const LoraHook& lora) {
    const LayerShape shape(d, b, index);
    const int m = b.m, hidden = d.hidden, q_width = shape.q_width, qkv_width = shape.qkv_width;
    const int inter = d.intermediate;
    const int64_t token_rows = static_cast<int64_t>(d.num_kv_heads) * shape.row_bytes;

    for (int t = 0; t < m; ++t) {
        float* x = own.x.data() + static_cast<size_t>(t) * hidden;
        if (index > 0) add_row(x, buf.y.data() + static_cast<size_t>(t) * hidden, hidden);
        lora.add_previous_down(t, x);
        norm_and_quantize(x, layer.input_norm, d, lora.row(own.row.data(), t), own.hidden_acts->row(t));
    }
    project(layer.qkv, own.hidden_acts->acts, buf.qkv.data(), qkv_width, m, num_threads, d.matmul_isa, lora, LoraProjection::kQkv,
            lora.inputs(), lora.input_width());
    std::copy(buf.qkv.begin(), buf.qkv.end(), own.qkv.begin());
    for (int t = 0; t < m; ++t) {
        lora.add(LoraProjection::kQkv, t, own.qkv.data() + static_cast<size_t>(t) * qkv_width);
        float* row = own.qkv.data() + static_cast<size_t>(t) * qkv_width;
        finish_qkv_row(layer, d, b, row, t);
        uint8_t* fresh = own.fresh_kv.data() + 2 * t * token_rows;
        store_token_kv(d, shape.dtype, row, fresh, fresh + token_rows);
        if (writes_cache) {
            std::copy(fresh, fresh + token_rows, shape.slot_rows(shape.key_cache, d, b, t));
            std::copy(fresh + token_rows, fresh + 2 * token_rows, shape.slot_rows(shape.value_cache, d, b, t));
        }
    }
#pragma omp for schedule(dynamic, 1)
    for (int item = 0; item < buf.plan.items(); ++item) {
        attend_item(d, b, shape, own.qkv.data(), item, own.fresh_kv.data(), own.attention_scratch, buf);
    }
    for (int t = 0; t < m; ++t) {
        float* attention_row = own.attention.data() + static_cast<size_t>(t) * q_width;
        merge_token(d, buf, t, attention_row);
        quantize_rows_avx2(attention_row, 0, 1, own.attention_acts->row(t));
    }
    project(layer.o, own.attention_acts->acts, buf.y.data(), hidden, m, num_threads, d.matmul_isa, lora, LoraProjection::kO,
            own.attention.data(), q_width);
    for (int t = 0; t < m; ++t) {
        float* x = own.x.data() + static_cast<size_t>(t) * hidden;
        add_row(x, buf.y.data() + static_cast<size_t>(t) * hidden, hidden);
        lora.add(LoraProjection::kO, t, x);
        if (layer.o_bias != 0) add_row(x, ptr<const float>(layer.o_bias), hidden);
        norm_and_quantize(x, layer.post_norm, d, lora.row(own.row.data(), t), own.hidden_acts->row(t));
    }
    project(layer.gate_up, own.hidden_acts->acts, buf.gate_up.data(), 2 * inter, m, num_threads, d.matmul_isa, lora,
            LoraProjection::kGateUp, lora.inputs(), lora.input_width());
    for (int t = 0; t < m; ++t) {
        gate_and_quantize(lora.gate_up(t, buf.gate_up.data() + static_cast<size_t>(t) * 2 * inter), inter,
                          lora.row(own.row.data(), t), own.gate_acts->row(t));
    }
    project(layer.down, own.gate_acts->acts, buf.y.data(), hidden, m, num_threads, d.matmul_isa, lora, LoraProjection::kDown,
            lora.inputs(), lora.input_width());
}

}  // namespace

const char* check_decode_tables(const LayerTable* layers, const DecodeDims& d) {
    if (d.num_layers <= 0 || d.hidden <= 0 || d.num_heads <= 0 || d.num_kv_heads <= 0 || d.intermediate <= 0 ||
        d.block_size <= 0) {
        return "model dimensions must be positive";
    }
    if (d.num_heads % d.num_kv_heads != 0) return "num_heads must be a multiple of num_kv_heads";
    if (d.head_dim <= 0 || d.head_dim % 8 != 0) return "head_dim must be a positive multiple of 8";
    const int q_width = d.num_heads * d.head_dim;
    const int kv_width = d.num_kv_heads * d.head_dim;
    for (int i = 0; i < d.num_layers; ++i) {
        const LayerTable& layer = layers[i];
        if (layer.input_norm == 0 || layer.post_norm == 0) return "a layer has no norm weights";
        const char* error = check_projection(layer.qkv, d.hidden, q_width + 2 * kv_width);
        if (error == nullptr) error = check_projection(layer.o, q_width, d.hidden);
        if (error == nullptr) error = check_projection(layer.gate_up, d.hidden, 2 * d.intermediate);
        if (error == nullptr) error = check_projection(layer.down, d.intermediate, d.hidden);
        if (error != nullptr) return error;
    }
    return nullptr;
}

const char* check_decode_batch(const DecodeDims& d, const DecodeBatch& b) {
    KVDtype dtype;
    if (!kv_dtype_from_int(b.kv_dtype, &dtype)) return "unknown KV cache dtype id";
    const int64_t slots = b.num_cache_blocks * d.block_size;
    for (int t = 0; t < b.m; ++t) {
        const int64_t len = b.context_lens[t];
        if (len < 1 || len > b.block_table_stride * d.block_size) return "a context length does not fit its block table";
        if (b.slots[t] < 0 || b.slots[t] >= slots) return "a slot lies outside the KV cache";
        const int64_t* table = b.block_tables + t * b.block_table_stride;
        for (int64_t i = 0; i < (len + d.block_size - 1) / d.block_size; ++i) {
            if (table[i] < 0 || table[i] >= b.num_cache_blocks) return "a block id lies outside the KV cache";
        }
    }
    return nullptr;
}

// Whether some row's context holds a slot another row writes in this step (several new tokens of one sequence,
// as speculative verification sends them). The few-token mode cannot run those: one thread writes the cache
// while the others attend, and each row takes only its own new key and value from its row.
bool rows_read_each_other(const DecodeDims& d, const DecodeBatch& b) {
    for (int t = 0; t < b.m; ++t) {
        const int64_t* table = b.block_tables + t * b.block_table_stride;
        const int64_t cached = b.context_lens[t] - 1;  // the positions row t reads from the cache
        for (int u = 0; u < b.m; ++u) {
            if (u == t) continue;
            const int64_t block = b.slots[u] / d.block_size, offset = b.slots[u] % d.block_size;
            for (int64_t i = 0; i * d.block_size + offset < cached; ++i) {
                if (table[i] == block) return true;
            }
        }
    }
    return false;
}

void decode_step_avx2(const LayerTable* layers, const DecodeDims& d, const DecodeBatch& b, int num_threads) {
    const bool own_rows = num_threads > 1 && b.m <= kOwnRowsTokens && !rows_read_each_other(d, b);
    StepBuffers buf(d, b, num_threads, own_rows);
    std::unique_ptr<LoraStep> lora;
    if (b.lora != nullptr) lora.reset(new LoraStep(d, b.m, *b.lora, own_rows ? num_threads : 1, num_threads));
#pragma omp parallel num_threads(num_threads)
    {
        ThreadState own(d, b, own_rows);
#ifdef _OPENMP
        const int thread = omp_get_thread_num();
#else
        const int thread = 0;
#endif
        const bool first_thread = thread == 0;
        for (int i = 0; i < d.num_layers; ++i) {
            const LoraHook hook{lora.get(), own_rows ? thread : 0, thread, i};
            if (own_rows) {
                run_layer_own_rows(layers[i], i, d, b, buf, own, num_threads, first_thread, hook);
            } else {
                run_layer_shared(layers[i], i, d, b, buf, own, num_threads, hook);
            }
        }
        float* x = own_rows ? own.x.data() : b.x;
#pragma omp for schedule(static)
        for (int t = 0; t < b.m; ++t) {
            float* xt = x + static_cast<size_t>(t) * d.hidden;
            add_row(xt, buf.y.data() + static_cast<size_t>(t) * d.hidden, d.hidden);
            if (lora) lora->add(d.num_layers - 1, LoraProjection::kDown, t, xt);
            rms_norm_row(xt, b.final_norm, d.hidden, d.eps, b.out + static_cast<size_t>(t) * d.hidden);
        }
    }
}

}  // namespace ember
