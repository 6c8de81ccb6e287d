// How one head row (head_dim values of one token's key or value for one kv head) is stored in the paged KV cache.
// The ids are the ones Python passes (ember.models.kv_cache_format keeps the same numbers).
#pragma once

#include <cstdint>

namespace ember {

enum class KVDtype : int {
    kF32 = 0,   // head_dim floats
    kF16 = 1,   // head_dim IEEE halves, round to nearest even
    kBF16 = 2,  // head_dim bfloat16, round to nearest even
    kQ8_0 = 3,  // head_dim int8 then one float scale: value = scale * q, scale = absmax / 127
};

inline bool kv_dtype_from_int(int id, KVDtype* out) {
    if (id < 0 || id > 3) return false;
    *out = static_cast<KVDtype>(id);
    return true;
}

// Bytes of one stored head row.
inline int64_t kv_row_bytes(KVDtype dtype, int head_dim) {
    switch (dtype) {
        case KVDtype::kF32: return 4 * static_cast<int64_t>(head_dim);
        case KVDtype::kF16:
        case KVDtype::kBF16: return 2 * static_cast<int64_t>(head_dim);
        case KVDtype::kQ8_0: return static_cast<int64_t>(head_dim) + 4;
    }
    return 0;
}

}  // namespace ember
