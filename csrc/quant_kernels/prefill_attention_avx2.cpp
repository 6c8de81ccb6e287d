// prefill_attention.h on AVX2 + FMA + F16C: 8 lanes, blocks of 4 rows x 3 vectors (12 accumulators, 3 loads and a
// broadcast in 16 registers).
#include <immintrin.h>

#include <cmath>

#include "vector_exp_avx2.h"

namespace ember {
namespace {

struct Avx2Simd {
    using V = __m256;
    static constexpr int kLanes = 8;
    static constexpr int kRowsPerBlock = 4;
    static constexpr int kVecsPerBlock = 3;

    static V load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static V zero() { return _mm256_setzero_ps(); }
    static V set1(float x) { return _mm256_set1_ps(x); }
    static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V max(V a, V b) { return _mm256_max_ps(a, b); }
    static V exp(V x) { return exp_ps(x); }
    // a > b ? if_greater : otherwise, lane by lane
    static V select_greater(V a, V b, V if_greater, V otherwise) {
        return _mm256_blendv_ps(otherwise, if_greater, _mm256_cmp_ps(a, b, _CMP_GT_OQ));
    }
    // 0 where score is -inf (a masked key), else weight: exp_ps clamps, so it never gives an exact 0 itself
    static V zero_where_hidden(V score, V weight) {
        return _mm256_and_ps(weight, _mm256_cmp_ps(score, _mm256_set1_ps(-INFINITY), _CMP_NEQ_OQ));
    }
};

}  // namespace
}  // namespace ember

#include "prefill_attention_tiles.h"

namespace ember {

void prefill_attention_avx2(const PrefillAttention& p, int num_threads) {
    run_prefill_attention<Avx2Simd>(p, num_threads);
}

}  // namespace ember
