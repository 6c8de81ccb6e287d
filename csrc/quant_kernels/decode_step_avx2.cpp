// The fused decode step (decode_step.h). Phases are OpenMP work-sharing loops inside one parallel region; the
// implicit barrier after each is the only synchronisation, so the threads stay hot from the first layer to the
// last. Row phases (norms, rope, gate) split tokens over threads; with one token one thread does them, which
// costs a microsecond; the matmuls and attention heads are what both threads share.
#include "decode_step.h"

#include <algorithm>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "decode_ops.h"
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
void run_projection(const Projection& p, const QuantizedActs& acts, float* y, int ldy, int m, int num_threads) {
    int column = 0;
    for (int i = 0; i < p.num_parts; ++i) {
        const ProjectionPart& part = p.parts[i];
        QType qtype;
        qtype_from_int(static_cast<int>(part.qtype), &qtype);
        const int n = static_cast<int>(part.n);
        const WorkPlan plan = plan_work(m, n, num_threads);
        const MatmulSlice base{qtype, ptr<const uint8_t>(part.data), n, acts.k, &acts, y + column, ldy, 0, 0, 0, 0};
#pragma omp for schedule(dynamic, 1) nowait
        for (int item = 0; item < plan.items(); ++item) matmul_slice_avx2(plan.item_slice(base, item));
        column += n;
    }
#pragma omp barrier
}

struct StepBuffers {
    ActivationBuffer hidden_acts;     // [m, hidden] normed residual, quantized
    ActivationBuffer attention_acts;  // [m, q_width]
    ActivationBuffer gate_acts;       // [m, intermediate]
    std::vector<float> qkv;           // [m, q_width + 2 kv_width]
    std::vector<float> attention;     // [m, q_width]
    std::vector<float> y;             // [m, hidden] output of o and down
    std::vector<float> gate_up;       // [m, 2 intermediate]

    StepBuffers(const DecodeDims& d, int m)
        : hidden_acts(m, d.hidden),
          attention_acts(m, d.num_heads * d.head_dim),
          gate_acts(m, d.intermediate),
          qkv(static_cast<size_t>(m) * (d.num_heads + 2 * d.num_kv_heads) * d.head_dim),
          attention(static_cast<size_t>(m) * d.num_heads * d.head_dim),
          y(static_cast<size_t>(m) * d.hidden),
          gate_up(static_cast<size_t>(m) * 2 * d.intermediate) {}
};

// Bias, per-head q/k norms and rope on token t's q|k|v row, then its key and value into the cache.
void finish_qkv_row(const LayerTable& layer, const DecodeDims& d, const DecodeBatch& b, float* row, int t,
                    float* key_cache, float* value_cache) {
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
    const int64_t slot = b.slots[t];
    std::copy(row + q_width, row + q_width + kv_width, key_cache + slot * kv_width);
    std::copy(row + q_width + kv_width, row + q_width + 2 * kv_width, value_cache + slot * kv_width);
}

void run_layer(const LayerTable& layer, int index, const DecodeDims& d, const DecodeBatch& b, StepBuffers& buf,
               std::vector<float>& row, std::vector<float>& scores, int num_threads) {
    const int m = b.m;
    const int hidden = d.hidden;
    const int q_width = d.num_heads * d.head_dim;
    const int qkv_width = q_width + 2 * d.num_kv_heads * d.head_dim;
    const int inter = d.intermediate;
    float* key_cache = ptr<float>(b.kv_caches[2 * index]);
    float* value_cache = ptr<float>(b.kv_caches[2 * index + 1]);

    // The previous layer's MLP output joins the residual stream here (the embeddings need nothing).
#pragma omp for schedule(static)
    for (int t = 0; t < m; ++t) {
        float* x = b.x + static_cast<size_t>(t) * hidden;
        if (index > 0) add_row(x, buf.y.data() + static_cast<size_t>(t) * hidden, hidden);
        rms_norm_row(x, ptr<const float>(layer.input_norm), hidden, d.eps, row.data());
        quantize_rows_avx2(row.data(), 0, 1, buf.hidden_acts.row(t));
    }
    run_projection(layer.qkv, buf.hidden_acts.acts, buf.qkv.data(), qkv_width, m, num_threads);
#pragma omp for schedule(static)
    for (int t = 0; t < m; ++t) {
        finish_qkv_row(layer, d, b, buf.qkv.data() + static_cast<size_t>(t) * qkv_width, t, key_cache, value_cache);
    }
    const int group = d.num_heads / d.num_kv_heads;
#pragma omp for schedule(dynamic, 1)
    for (int item = 0; item < m * d.num_kv_heads; ++item) {
        const int t = item / d.num_kv_heads;
        const int kv_head = item % d.num_kv_heads;
        const PagedContext ctx{key_cache,  value_cache,   b.block_tables + t * b.block_table_stride,
                               d.block_size, d.num_kv_heads, static_cast<int>(b.context_lens[t])};
        const int head_offset = kv_head * group * d.head_dim;
        decode_attention(buf.qkv.data() + static_cast<size_t>(t) * qkv_width + head_offset, ctx, kv_head, group,
                         d.head_dim, d.scale, scores.data(),
                         buf.attention.data() + static_cast<size_t>(t) * q_width + head_offset);
    }
#pragma omp for schedule(static)
    for (int t = 0; t < m; ++t) {
        quantize_rows_avx2(buf.attention.data() + static_cast<size_t>(t) * q_width, 0, 1, buf.attention_acts.row(t));
    }
    run_projection(layer.o, buf.attention_acts.acts, buf.y.data(), hidden, m, num_threads);
#pragma omp for schedule(static)
    for (int t = 0; t < m; ++t) {
        float* x = b.x + static_cast<size_t>(t) * hidden;
        add_row(x, buf.y.data() + static_cast<size_t>(t) * hidden, hidden);
        if (layer.o_bias != 0) add_row(x, ptr<const float>(layer.o_bias), hidden);
        rms_norm_row(x, ptr<const float>(layer.post_norm), hidden, d.eps, row.data());
        quantize_rows_avx2(row.data(), 0, 1, buf.hidden_acts.row(t));
    }
    run_projection(layer.gate_up, buf.hidden_acts.acts, buf.gate_up.data(), 2 * inter, m, num_threads);
#pragma omp for schedule(static)
    for (int t = 0; t < m; ++t) {
        const float* gate = buf.gate_up.data() + static_cast<size_t>(t) * 2 * inter;
        silu_gate_row(gate, gate + inter, inter, row.data());
        quantize_rows_avx2(row.data(), 0, 1, buf.gate_acts.row(t));
    }
    run_projection(layer.down, buf.gate_acts.acts, buf.y.data(), hidden, m, num_threads);
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

void decode_step_avx2(const LayerTable* layers, const DecodeDims& d, const DecodeBatch& b, int num_threads) {
    int64_t longest = 1;
    for (int t = 0; t < b.m; ++t) longest = std::max(longest, b.context_lens[t]);
    StepBuffers buf(d, b.m);
    const size_t row_floats = static_cast<size_t>(std::max(d.hidden, d.intermediate));
    const size_t score_floats = static_cast<size_t>(d.num_heads / d.num_kv_heads) * longest;
#pragma omp parallel num_threads(num_threads)
    {
        std::vector<float> row(row_floats);       // one normed or gated row before it is quantized
        std::vector<float> scores(score_floats);  // one (token, kv head) attention's scores
        for (int i = 0; i < d.num_layers; ++i) run_layer(layers[i], i, d, b, buf, row, scores, num_threads);
#pragma omp for schedule(static)
        for (int t = 0; t < b.m; ++t) {
            float* x = b.x + static_cast<size_t>(t) * d.hidden;
            add_row(x, buf.y.data() + static_cast<size_t>(t) * d.hidden, d.hidden);
            rms_norm_row(x, b.final_norm, d.hidden, d.eps, b.out + static_cast<size_t>(t) * d.hidden);
        }
    }
}

}  // namespace ember
