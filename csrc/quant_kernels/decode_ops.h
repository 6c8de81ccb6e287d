// The small per-row operations of a decoder layer that sit between its matmuls, for the fused decode step:
// RMSNorm, rotary embedding and the SiLU gate (the attention is decode_attention.h). AVX2 + FMA (compiled with
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

}  // namespace ember
