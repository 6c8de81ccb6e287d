// The body of prefill_attention.h, written once over a SIMD traits type S (prefill_attention_avx2.cpp and
// prefill_attention_avx512.cpp each include it with their own S and compiler flags; everything here sits in an
// anonymous namespace so neither file's copy can stand in for the other's at link time).
//
// Layout per work item (one query tile of one sequence, one kv head): its R = queries x group query rows lie
// along the vector lanes everywhere, so the online softmax's running max and sum are plain vectors.
//   qt     [head_dim, R]  the rows' queries, pre-scaled, transposed once per item
//   scores [keys, R]      S^T = K_tile @ qt, then the softmax weights P^T in place
//   acc    [head_dim, R]  O^T += V_tile^T @ P^T, normalised by the running sum at the end
// K and V tiles are decoded to fp32 [keys, head_dim] as they are read, once for all R rows.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "prefill_attention.h"

namespace ember {
namespace {

constexpr int kKeyTile = 64;      // keys per tile: the tile's fp32 keys, values and scores stay in L1/L2
constexpr int kTargetRows = 96;   // query rows (queries x group) per item: 12 AVX2 or 6 AVX-512 vectors; 48
                                  // read each 8k context twice as often from L3 (97 vs 56 ms per 8k chunk-layer)

// head_dim stored values of one row as floats at dst (q8_0 rows times their scale). F16C / AVX2 code, which both
// including files are compiled for.
template <KVDtype T>
inline void row_to_float(const uint8_t* row, int head_dim, float* dst) {
    if constexpr (T == KVDtype::kF32) {
        std::memcpy(dst, row, sizeof(float) * head_dim);
    } else if constexpr (T == KVDtype::kF16) {
        for (int d = 0; d < head_dim; d += 8) {
            _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * d))));
        }
    } else if constexpr (T == KVDtype::kBF16) {
        for (int d = 0; d < head_dim; d += 8) {
            const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * d)));
            _mm256_storeu_ps(dst + d, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
        }
    } else {
        float scale;
        std::memcpy(&scale, row + head_dim, sizeof(scale));
        const __m256 factor = _mm256_set1_ps(scale);
        for (int d = 0; d < head_dim; d += 8) {
            const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + d));
            _mm256_storeu_ps(dst + d, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), factor));
        }
    }
}

// c[m, :] (+)= sum_k a(m, k) b[k, :] for MR rows and NV vectors of columns; a(m, k) = a[m * a_m + k * a_k].
template <class S, int MR, int NV>
inline void gemm_block(const float* a, int64_t a_m, int64_t a_k, const float* b, int ldb, float* c, int ldc,
                       int depth, bool accumulate) {
    using V = typename S::V;
    V acc[MR][NV];
    for (int m = 0; m < MR; ++m) {
        for (int j = 0; j < NV; ++j) acc[m][j] = accumulate ? S::load(c + m * ldc + j * S::kLanes) : S::zero();
    }
    for (int k = 0; k < depth; ++k) {
        V bv[NV];
        for (int j = 0; j < NV; ++j) bv[j] = S::load(b + k * ldb + j * S::kLanes);
        for (int m = 0; m < MR; ++m) {
            const V av = S::set1(a[m * a_m + k * a_k]);
            for (int j = 0; j < NV; ++j) acc[m][j] = S::fmadd(av, bv[j], acc[m][j]);
        }
    }
    for (int m = 0; m < MR; ++m) {
        for (int j = 0; j < NV; ++j) S::store(c + m * ldc + j * S::kLanes, acc[m][j]);
    }
}

// gemm_block with mr <= MR rows and nv <= NV vectors known only at run time.
template <class S, int MR, int NV>
inline void gemm_edge(int mr, int nv, const float* a, int64_t a_m, int64_t a_k, const float* b, int ldb, float* c,
                      int ldc, int depth, bool accumulate) {
    if constexpr (MR > 1) {
        if (mr < MR) return gemm_edge<S, MR - 1, NV>(mr, nv, a, a_m, a_k, b, ldb, c, ldc, depth, accumulate);
    }
    if constexpr (NV > 1) {
        if (nv < NV) return gemm_edge<S, MR, NV - 1>(mr, nv, a, a_m, a_k, b, ldb, c, ldc, depth, accumulate);
    }
    gemm_block<S, MR, NV>(a, a_m, a_k, b, ldb, c, ldc, depth, accumulate);
}

// c [rows, vecs * lanes] (+)= a [rows, depth] @ b [depth, vecs * lanes]: column blocks outside, so one block of b
// stays in L1 while every row block passes over it.
template <class S>
void gemm(const float* a, int64_t a_m, int64_t a_k, const float* b, int ldb, float* c, int ldc, int rows, int vecs,
          int depth, bool accumulate) {
    constexpr int MR = S::kRowsPerBlock;
    constexpr int NV = S::kVecsPerBlock;
    for (int j = 0; j < vecs; j += NV) {
        const int nv = std::min(NV, vecs - j);
        for (int m = 0; m < rows; m += MR) {
            gemm_edge<S, MR, NV>(std::min(MR, rows - m), nv, a + m * a_m, a_m, a_k, b + j * S::kLanes, ldb,
                                 c + m * ldc + j * S::kLanes, ldc, depth, accumulate);
        }
    }
}

struct WorkItem {
    int seq;
    int first_query;  // index inside the sequence's chunk
    int kv_head;
    int64_t keys;  // keys the tile attends to: its cost
};

// What one item's geometry is: its queries, rows and their positions.
struct TileShape {
    int queries_per_tile;  // per item, so that queries x group is about kTargetRows
    int group;             // query heads per kv head
    int rows;              // queries of this item x group
    int padded_rows;       // rows rounded up to whole vectors
};

template <class S>
class PrefillTiles {
  public:
    using V = typename S::V;

    PrefillTiles(const PrefillAttention& p, int max_rows)
        : p_(p),
          padded_max_(round_up(max_rows)),
          qt_(static_cast<size_t>(p.head_dim) * padded_max_),
          keys_(static_cast<size_t>(kKeyTile) * p.head_dim),
          values_(static_cast<size_t>(kKeyTile) * p.head_dim),
          scores_(static_cast<size_t>(kKeyTile) * padded_max_),
          acc_(static_cast<size_t>(p.head_dim) * padded_max_),
          max_(padded_max_),
          sum_(padded_max_),
          last_key_(padded_max_) {}

    static int round_up(int rows) { return (rows + S::kLanes - 1) / S::kLanes * S::kLanes; }

    template <KVDtype T>
    void run(const WorkItem& item, int queries_per_tile) {
        const int group = p_.num_heads / p_.num_kv_heads;
        const int64_t query_len = p_.query_lens[item.seq];
        const int64_t first_position = p_.context_lens[item.seq] - query_len;
        const int queries = static_cast<int>(std::min<int64_t>(queries_per_tile, query_len - item.first_query));
        const int rows = queries * group;
        const int padded = round_up(rows);
        const int vecs = padded / S::kLanes;
        const int head_dim = p_.head_dim;
        const int64_t tile_first = first_position + item.first_query;  // position of the tile's first query
        const int64_t tile_last = tile_first + queries - 1;
        load_queries(item, queries, group, padded);
        for (int r = 0; r < padded; ++r) {
            // padded rows repeat the last real row's limit; their results are never written out
            last_key_[r] = static_cast<float>(tile_first + std::min(r, rows - 1) / group);
        }
        std::fill(max_.begin(), max_.begin() + padded, -INFINITY);
        std::fill(sum_.begin(), sum_.begin() + padded, 0.0f);
        std::fill(acc_.begin(), acc_.begin() + static_cast<size_t>(head_dim) * padded, 0.0f);
        const int64_t* table = p_.block_tables + item.seq * p_.block_table_stride;
        for (int64_t first_key = 0; first_key <= tile_last; first_key += kKeyTile) {
            const int keys = static_cast<int>(std::min<int64_t>(kKeyTile, tile_last + 1 - first_key));
            load_rows<T>(p_.key_cache, table, first_key, keys, item.kv_head, keys_.data());
            load_rows<T>(p_.value_cache, table, first_key, keys, item.kv_head, values_.data());
            // scores [keys, padded] = K [keys, head_dim] @ qt [head_dim, padded]
            gemm<S>(keys_.data(), head_dim, 1, qt_.data(), padded, scores_.data(), padded, keys, vecs, head_dim,
                    false);
            if (first_key + keys - 1 > tile_first) mask_future(first_key, keys, padded);
            softmax_update(keys, padded);
            // acc [head_dim, padded] += V^T [head_dim, keys] @ P^T [keys, padded]
            gemm<S>(values_.data(), 1, head_dim, scores_.data(), padded, acc_.data(), padded, head_dim, vecs, keys,
                    true);
        }
        store_output(item, queries, group, padded);
    }

  private:
    // qt [head_dim, padded]: row r = (query r / group, head r % group of the item's kv head), times the scale.
    void load_queries(const WorkItem& item, int queries, int group, int padded) {
        const int head_dim = p_.head_dim;
        std::fill(qt_.begin(), qt_.begin() + static_cast<size_t>(head_dim) * padded, 0.0f);
        const int64_t first_row = p_.query_starts[item.seq] + item.first_query;
        for (int i = 0; i < queries; ++i) {
            for (int g = 0; g < group; ++g) {
                const float* q = p_.q + ((first_row + i) * p_.num_heads + item.kv_head * group + g) * head_dim;
                const int r = i * group + g;
                for (int d = 0; d < head_dim; ++d) qt_[static_cast<size_t>(d) * padded + r] = q[d] * p_.scale;
            }
        }
    }

    template <KVDtype T>
    void load_rows(const uint8_t* cache, const int64_t* table, int64_t first_key, int keys, int kv_head,
                   float* dst) const {
        const int64_t row_bytes = kv_row_bytes(p_.dtype, p_.head_dim);
        for (int j = 0; j < keys; ++j) {
            const int64_t position = first_key + j;
            const int64_t slot = table[position / p_.block_size] * p_.block_size + position % p_.block_size;
            row_to_float<T>(cache + (slot * p_.num_kv_heads + kv_head) * row_bytes, p_.head_dim,
                            dst + static_cast<size_t>(j) * p_.head_dim);
        }
    }

    // Scores of keys after a row's own position become -inf.
    void mask_future(int64_t first_key, int keys, int padded) {
        const V hidden = S::set1(-INFINITY);
        for (int j = 0; j < keys; ++j) {
            const V position = S::set1(static_cast<float>(first_key + j));
            float* s = scores_.data() + static_cast<size_t>(j) * padded;
            for (int c = 0; c < padded; c += S::kLanes) {
                S::store(s + c, S::select_greater(position, S::load(last_key_.data() + c), hidden, S::load(s + c)));
            }
        }
    }

    // Online softmax over the tile, lanes = rows: new running max, acc and sum rescaled by exp(old - new), the
    // scores replaced by their weights exp(s - max) (exactly 0 where masked).
    void softmax_update(int keys, int padded) {
        const int head_dim = p_.head_dim;
        for (int c = 0; c < padded; c += S::kLanes) {
            V tile_max = S::set1(-INFINITY);
            for (int j = 0; j < keys; ++j) tile_max = S::max(tile_max, S::load(scores_.data() + j * padded + c));
            const V old_max = S::load(max_.data() + c);
            const V new_max = S::max(old_max, tile_max);
            // old_max = -inf only before the first tile, when acc and sum are still 0
            const V shrink = S::exp(S::sub(old_max, new_max));
            V tile_sum = S::zero();
            for (int j = 0; j < keys; ++j) {
                float* s = scores_.data() + j * padded + c;
                const V score = S::load(s);
                const V weight = S::zero_where_hidden(score, S::exp(S::sub(score, new_max)));
                tile_sum = S::add(tile_sum, weight);
                S::store(s, weight);
            }
            S::store(sum_.data() + c, S::fmadd(S::load(sum_.data() + c), shrink, tile_sum));
            S::store(max_.data() + c, new_max);
            for (int d = 0; d < head_dim; ++d) {
                float* a = acc_.data() + static_cast<size_t>(d) * padded + c;
                S::store(a, S::mul(S::load(a), shrink));
            }
        }
    }

    void store_output(const WorkItem& item, int queries, int group, int padded) {
        const int head_dim = p_.head_dim;
        const int64_t first_row = p_.query_starts[item.seq] + item.first_query;
        for (int i = 0; i < queries; ++i) {
            for (int g = 0; g < group; ++g) {
                const int r = i * group + g;
                const float inverse = 1.0f / sum_[r];
                float* o = p_.out + ((first_row + i) * p_.num_heads + item.kv_head * group + g) * head_dim;
                for (int d = 0; d < head_dim; ++d) o[d] = acc_[static_cast<size_t>(d) * padded + r] * inverse;
            }
        }
    }

    const PrefillAttention& p_;
    int padded_max_;
    std::vector<float> qt_, keys_, values_, scores_, acc_, max_, sum_, last_key_;
};

inline int queries_per_tile(int group) { return std::max(1, (kTargetRows + group - 1) / group); }

// Every (sequence, query tile, kv head), costliest first so the dynamic schedule ends evenly.
inline std::vector<WorkItem> work_items(const PrefillAttention& p, int tile) {
    std::vector<WorkItem> items;
    for (int s = 0; s < p.num_seqs; ++s) {
        const int64_t first_position = p.context_lens[s] - p.query_lens[s];
        for (int64_t first = 0; first < p.query_lens[s]; first += tile) {
            const int64_t last = std::min<int64_t>(first + tile, p.query_lens[s]) - 1;
            for (int h = 0; h < p.num_kv_heads; ++h) {
                items.push_back(WorkItem{s, static_cast<int>(first), h, first_position + last + 1});
            }
        }
    }
    std::stable_sort(items.begin(), items.end(),
                     [](const WorkItem& a, const WorkItem& b) { return a.keys > b.keys; });
    return items;
}

template <class S, KVDtype T>
void run_items(const PrefillAttention& p, int num_threads) {
    const int tile = queries_per_tile(p.num_heads / p.num_kv_heads);
    const std::vector<WorkItem> items = work_items(p, tile);
    const int count = static_cast<int>(items.size());
    const int max_rows = tile * (p.num_heads / p.num_kv_heads);
#ifdef _OPENMP
    if (num_threads > 1 && count > 1) {
#pragma omp parallel num_threads(std::min(num_threads, count))
        {
            PrefillTiles<S> tiles(p, max_rows);
#pragma omp for schedule(dynamic, 1)
            for (int i = 0; i < count; ++i) tiles.template run<T>(items[i], tile);
        }
        return;
    }
#endif
    (void)num_threads;
    PrefillTiles<S> tiles(p, max_rows);
    for (int i = 0; i < count; ++i) tiles.template run<T>(items[i], tile);
}

template <class S>
void run_prefill_attention(const PrefillAttention& p, int num_threads) {
    switch (p.dtype) {
        case KVDtype::kF32: return run_items<S, KVDtype::kF32>(p, num_threads);
        case KVDtype::kF16: return run_items<S, KVDtype::kF16>(p, num_threads);
        case KVDtype::kBF16: return run_items<S, KVDtype::kBF16>(p, num_threads);
        case KVDtype::kQ8_0: return run_items<S, KVDtype::kQ8_0>(p, num_threads);
    }
}

}  // namespace
}  // namespace ember
