// One decode step of a whole decoder stack in one call: every layer's RMSNorm, projections (int8 block kernels),
// rotary embedding, paged attention, SiLU gate and residual adds, inside one OpenMP parallel region, so a step
// costs one call from Python instead of ~40 torch ops per layer.
//
// The tables are plain int64 arrays that Python fills once (pointers into tensors it keeps alive): every field is
// an int64 so the layout is the same on both sides.
#pragma once

#include <cstdint>

namespace ember {

constexpr int kMaxProjectionParts = 3;

struct DecodeLora;  // decode_lora.h

// One weight of a projection: a packed matrix of `n` output rows, in qtype `qtype` (QType id).
struct ProjectionPart {
    int64_t qtype;
    int64_t data;  // interleaved tiles (prepared weight)
    int64_t n;
};

// A fused projection (q|k|v or gate|up) may hold weights of different block formats, one part each; the parts
// fill consecutive column ranges of the output.
struct Projection {
    int64_t num_parts;
    ProjectionPart parts[kMaxProjectionParts];
};

struct LayerTable {
    int64_t input_norm;  // float [hidden]
    int64_t post_norm;   // float [hidden]
    int64_t q_norm;      // float [head_dim] or 0 (Qwen3's per-head RMSNorm)
    int64_t k_norm;      // float [head_dim] or 0
    int64_t qkv_bias;    // float [q + 2 kv] or 0
    int64_t o_bias;      // float [hidden] or 0
    Projection qkv;
    Projection o;
    Projection gate_up;
    Projection down;
};
constexpr int kLayerTableFields = 6 + 4 * (1 + 3 * kMaxProjectionParts);
static_assert(sizeof(LayerTable) == kLayerTableFields * sizeof(int64_t), "LayerTable must be all int64");

struct DecodeDims {
    int num_layers;
    int hidden;
    int num_heads;
    int num_kv_heads;
    int head_dim;
    int intermediate;
    int block_size;
    float eps;
    float scale;  // attention softmax scale
    int matmul_isa = 1;  // Isa id (kernel_isa.h) of the projections' matmuls, checked by the caller; 1 = AVX2
    int attention_isa = 0;  // AttentionIsa id (decode_attention.h), checked by the caller; 0 = the best here
};

// m new tokens, each a row with its own context (its block table row and length, itself included): one token
// per sequence for decodes, or several of one sequence (speculative verification), which read each other's
// keys and values from the cache once every row has written its own.
struct DecodeBatch {
    int m;
    float* x;                    // [m, hidden] embeddings in, the residual stream (overwritten)
    float* out;                  // [m, hidden] final-normed hidden states
    const float* final_norm;     // [hidden]
    const float* cos;            // [m, head_dim]
    const float* sin;            // [m, head_dim]
    const int64_t* slots;        // [m] cache slot of each new token
    const int64_t* block_tables; // [m, block_table_stride]
    int64_t block_table_stride;
    const int64_t* context_lens;  // [m], the new token included
    const int64_t* kv_caches;     // [num_layers, 2] address of each layer's key and value cache
    int64_t num_cache_blocks;     // blocks in each cache tensor
    int kv_dtype;                 // KVDtype id of the caches' rows (kv_format.h)
    const DecodeLora* lora = nullptr;  // the rows' LoRA adapters (decode_lora.h); nullptr: all base-model rows
};

// Returns nullptr on success, else a message (bad table entries) and nothing is computed.
const char* check_decode_tables(const LayerTable* layers, const DecodeDims& dims);

// Returns nullptr when the KV dtype is known and every block id, slot and context length of the batch lies inside
// the caches.
const char* check_decode_batch(const DecodeDims& dims, const DecodeBatch& batch);

void decode_step_avx2(const LayerTable* layers, const DecodeDims& dims, const DecodeBatch& batch, int num_threads);

}  // namespace ember
