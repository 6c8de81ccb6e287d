// The small per-row operations of a decoder layer that sit between its matmuls, for the fused decode step:
// RMSNorm, rotary embedding, the SiLU gate and paged attention of one new token. AVX2 + FMA (compiled with
// -mavx2 -mfma, called only after the run-time CPU check). Each works on one row or one head, so the caller
// decides how rows and heads are spread over threads.
#pragma once

#include <cstdint>

namespace ember {

// out[i] = x[i] / rms(x) * weight[i] over n values; out may be x.
void rms_norm_row(const float* x, const float* weight, int n, float eps, float* out);

// In place, Hugging Face's rotate-half convention: the pairs are (i, i + head_dim / 2). cos, sin: [head_dim].
void rotate_half_row(float* v, const float* cos, const float* sin, int head_dim);

// out[i] = silu(gate[i]) * up[i] over n values.
void silu_gate_row(const float* gate, const float* up, int n, float* out);

// x[i] += y[i] over n values.
void add_row(float* x, const float* y, int n);

// Where one sequence's cached keys and values are: caches [num_blocks, block_size, num_kv_heads, head_dim].
struct PagedContext {
    const float* key_cache;
    const float* value_cache;
    const int64_t* block_table;  // physical block of each block_size positions
    int block_size;
    int num_kv_heads;
    int context_len;  // positions 0 .. context_len - 1, the new token's included
    // The new token's key and value [head_dim] of this kv head when the caller has them at hand (then its
    // cache slot is not read, so another thread may be writing it); nullptr: read them from the cache.
    const float* new_key;
    const float* new_value;
};

// One new token's attention for the `group` query heads q [group, head_dim] that share key/value head
// `kv_head`: softmax(scale * q K^T) V over the whole context -> out [group, head_dim]. head_dim is a
// multiple of 8; scores is scratch of group * context_len floats.
void decode_attention(const float* q, const PagedContext& ctx, int kv_head, int group, int head_dim, float scale,
                      float* scores, float* out);

}  // namespace ember
