// prefill_attention.h on AVX-512 F: 16 lanes, blocks of 8 rows x 3 vectors (24 accumulators, 3 loads and a
// broadcast in 32 registers). Compiled with the AVX-512 flags; only called after the run-time CPU check.
#include <immintrin.h>

#include <cmath>

// GCC 12 flags its own _mm512_undefined_ps() inside _mm512_max_ps & co. as maybe-uninitialized (a known false
// positive of that header); nothing here reads an undefined register.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ember {
namespace {

// e^x for 16 floats, the same reduction, polynomial and 2^n through the exponent bits as
// vector_exp_avx2.h.
inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.3365478515625f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

struct Avx512Simd {
    using V = __m512;
    static constexpr int kLanes = 16;
    static constexpr int kRowsPerBlock = 8;
    static constexpr int kVecsPerBlock = 3;

    static V load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static V zero() { return _mm512_setzero_ps(); }
    static V set1(float x) { return _mm512_set1_ps(x); }
    static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V max(V a, V b) { return _mm512_max_ps(a, b); }
    static V exp(V x) { return exp16(x); }
    static V select_greater(V a, V b, V if_greater, V otherwise) {
        return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), otherwise, if_greater);
    }
    static V zero_where_hidden(V score, V weight) {
        return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(score, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ), weight);
    }
};

}  // namespace
}  // namespace ember

#include "prefill_attention_tiles.h"

namespace ember {

void prefill_attention_avx512(const PrefillAttention& p, int num_threads) {
    run_prefill_attention<Avx512Simd>(p, num_threads);
}

}  // namespace ember
