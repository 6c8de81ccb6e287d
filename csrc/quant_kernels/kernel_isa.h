// Which instruction set a matmul runs on, and the run-time check of what this CPU (and this build) has.
//
// Every kernel family reads the same interleaved tiles (quant_layout.h), so the choice can be made per call:
// Python picks one when a weight is prepared (the best the CPU has, unless EMBER_KERNEL_ISA caps it) and passes
// its id to every matmul and to the fused decode step.
#pragma once

#include "quant_layout.h"

namespace ember {

// The ids Python passes; ordered from the most portable to the fastest.
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512Vnni = 2 };
constexpr Isa kIsas[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni};

constexpr const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return "scalar";
        case Isa::Avx2: return "avx2";
        case Isa::Avx512Vnni: return "avx512_vnni";
    }
    return "";
}

#if defined(EMBER_HAVE_AVX512_VNNI)
// AVX-512 F/BW/VL + VNNI (vpdpbusd) kernels over the same tiles; the activations are quantized by the AVX2 code.
void matmul_slice_avx512_vnni(const MatmulSlice& slice);
#endif

// Whether this build has the kernels of `isa` and this CPU (and OS, for the zmm state) can run them.
inline bool cpu_supports(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return true;
        case Isa::Avx2:
#if defined(EMBER_HAVE_AVX2)
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
            return false;
#endif
        case Isa::Avx512Vnni:
#if defined(EMBER_HAVE_AVX512_VNNI)
            // The AVX2 code quantizes the activations, so AVX2 is needed too (every AVX-512 CPU has it).
            return cpu_supports(Isa::Avx2) && __builtin_cpu_supports("avx512f") &&
                   __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                   __builtin_cpu_supports("avx512vnni");
#else
            return false;
#endif
    }
    return false;
}

// False when `value` is no Isa id (it comes from Python).
inline bool isa_from_int(int value, Isa* out) {
    for (const Isa isa : kIsas) {
        if (static_cast<int>(isa) == value) {
            *out = isa;
            return true;
        }
    }
    return false;
}

// One work item on the kernels of `isa` (the caller checked cpu_supports(isa)).
inline void matmul_slice_on(Isa isa, const MatmulSlice& slice) {
    switch (isa) {
        case Isa::Avx512Vnni:
#if defined(EMBER_HAVE_AVX512_VNNI)
            return matmul_slice_avx512_vnni(slice);
#endif
        case Isa::Avx2:
#if defined(EMBER_HAVE_AVX2)
            return matmul_slice_avx2(slice);
#endif
        case Isa::Scalar:
            return matmul_slice_scalar(slice);
    }
}

inline void quantize_rows_on(Isa isa, const float* x, int t_begin, int t_end, const QuantizedActs& acts) {
#if defined(EMBER_HAVE_AVX2)
    if (isa != Isa::Scalar) return quantize_rows_avx2(x, t_begin, t_end, acts);
#endif
    (void)isa;
    quantize_rows_scalar(x, t_begin, t_end, acts);
}

}  // namespace ember
