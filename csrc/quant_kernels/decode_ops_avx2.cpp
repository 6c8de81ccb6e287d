// AVX2 + FMA bodies of decode_ops.h. exp is a vector polynomial (vector_exp_avx2.h): the SiLU gate of a
// 32-token batch alone takes ~1.5 million exponentials a step, which libm would spend milliseconds on.
#include <immintrin.h>

#include <cmath>

#include "decode_ops.h"
#include "simd_avx2.h"
#include "vector_exp_avx2.h"

namespace ember {

void rms_norm_row(const float* x, const float* weight, int n, float eps, float* out) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    float sum = hsum8(acc);
    for (; i < n; ++i) sum += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
    const __m256 inv_v = _mm256_set1_ps(inv);
    i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), inv_v);
        _mm256_storeu_ps(out + i, _mm256_mul_ps(v, _mm256_loadu_ps(weight + i)));
    }
    for (; i < n; ++i) out[i] = x[i] * inv * weight[i];
}

void rotate_half_row(float* v, const float* cos, const float* sin, int head_dim) {
    const int half = head_dim / 2;
    int i = 0;
    for (; i + 8 <= half; i += 8) {
        const __m256 a = _mm256_loadu_ps(v + i);
        const __m256 b = _mm256_loadu_ps(v + half + i);
        _mm256_storeu_ps(v + i, _mm256_fmsub_ps(a, _mm256_loadu_ps(cos + i), _mm256_mul_ps(b, _mm256_loadu_ps(sin + i))));
        _mm256_storeu_ps(v + half + i, _mm256_fmadd_ps(b, _mm256_loadu_ps(cos + half + i),
                                                       _mm256_mul_ps(a, _mm256_loadu_ps(sin + half + i))));
    }
    for (; i < half; ++i) {
        const float a = v[i];
        const float b = v[half + i];
        v[i] = a * cos[i] - b * sin[i];
        v[half + i] = b * cos[half + i] + a * sin[half + i];
    }
}

void silu_gate_row(const float* gate, const float* up, int n, float* out) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp_ps(_mm256_xor_ps(g, sign))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void add_row(float* x, const float* y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    }
    for (; i < n; ++i) x[i] += y[i];
}

}  // namespace ember
