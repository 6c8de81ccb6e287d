// Python entry points (plain CPython API, no torch headers: tensors arrive as data pointers that the
// Python wrapper has validated). Picks the SIMD or scalar kernels at run time and splits the work over
// OpenMP threads. The wheel links libgomp.so.1, the same soname torch's bundled OpenMP runtime carries,
// so inside a process that imported torch first both share one runtime and one thread team.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <memory>
#include <new>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "quant_layout.h"

namespace ember {
namespace {

bool cpu_has_avx2() {
#if defined(EMBER_HAVE_AVX2)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return false;
#endif
}

void quantize_rows(bool simd, const float* x, int t_begin, int t_end, const QuantizedActs& acts) {
#if defined(EMBER_HAVE_AVX2)
    if (simd) return quantize_rows_avx2(x, t_begin, t_end, acts);
#endif
    (void)simd;
    quantize_rows_scalar(x, t_begin, t_end, acts);
}

void matmul_slice(bool simd, const MatmulSlice& slice) {
#if defined(EMBER_HAVE_AVX2)
    if (simd) return matmul_slice_avx2(slice);
#endif
    (void)simd;
    matmul_slice_scalar(slice);
}

// Work is handed out in items of (token block, chunk of row groups) from a shared counter rather than as
// one fixed share per thread: on a shared machine a thread that loses its core for a time slice then
// delays the call by one item, not by half the matmul.
constexpr int kTokenBlock = 64;        // activations of a token block stay in L2 while a group's weights stay in L1
constexpr int kItemsPerThread = 8;     // granularity of the dynamic hand-out
constexpr size_t kPrivateQuantize = 16384;  // up to this many activations every thread quantizes them itself

struct ActivationBuffer {
    std::unique_ptr<int8_t[]> q;
    std::unique_ptr<float[]> d;
    std::unique_ptr<float[]> s;
    QuantizedActs acts;

    ActivationBuffer(int m, int k)
        : q(new int8_t[static_cast<size_t>(m) * k]),
          d(new float[static_cast<size_t>(m) * (k / kBlock)]),
          s(new float[static_cast<size_t>(m) * (k / kBlock)]),
          acts{q.get(), d.get(), s.get(), k} {}
};

struct WorkPlan {
    int token_blocks;
    int group_chunks;
    int groups_per_chunk;

    int items() const { return token_blocks * group_chunks; }
};

WorkPlan plan_work(int m, int n, int num_threads) {
    const int groups = row_groups(n);
    const int token_blocks = (m + kTokenBlock - 1) / kTokenBlock;
    const int wanted_chunks = std::max(1, (kItemsPerThread * num_threads + token_blocks - 1) / token_blocks);
    const int groups_per_chunk = std::max(1, (groups + wanted_chunks - 1) / wanted_chunks);
    return {token_blocks, (groups + groups_per_chunk - 1) / groups_per_chunk, groups_per_chunk};
}

void run_item(bool simd, MatmulSlice slice, const WorkPlan& plan, int item, int m) {
    const int tb = item / plan.group_chunks;
    const int chunk = item % plan.group_chunks;
    slice.t_begin = tb * kTokenBlock;
    slice.t_end = std::min(m, slice.t_begin + kTokenBlock);
    slice.g_begin = chunk * plan.groups_per_chunk;
    slice.g_end = std::min(row_groups(slice.n), slice.g_begin + plan.groups_per_chunk);
    matmul_slice(simd, slice);
}

void run_matmul(QType qtype, const float* x, int m, int k, const uint8_t* packed, int n, float* y,
                int num_threads, bool simd) {
    const WorkPlan plan = plan_work(m, n, num_threads);
    const bool private_quantize = static_cast<size_t>(m) * k <= kPrivateQuantize;
    // Small batches: each thread quantizes into its own buffer, so no thread waits at a barrier for another.
    const int buffers = private_quantize ? num_threads : 1;
    std::unique_ptr<std::unique_ptr<ActivationBuffer>[]> acts(new std::unique_ptr<ActivationBuffer>[buffers]);
    for (int i = 0; i < buffers; ++i) acts[i].reset(new ActivationBuffer(m, k));
    const MatmulSlice base{qtype, packed, n, k, nullptr, y, 0, 0, 0, 0};
#ifdef _OPENMP
    if (num_threads > 1) {
#pragma omp parallel num_threads(num_threads)
        {
            MatmulSlice slice = base;
            if (private_quantize) {
                slice.acts = &acts[omp_get_thread_num()]->acts;
                quantize_rows(simd, x, 0, m, *slice.acts);
            } else {
                slice.acts = &acts[0]->acts;
#pragma omp for schedule(static)
                for (int t = 0; t < m; ++t) quantize_rows(simd, x, t, t + 1, *slice.acts);
            }
#pragma omp for schedule(dynamic, 1) nowait
            for (int item = 0; item < plan.items(); ++item) run_item(simd, slice, plan, item, m);
        }
        return;
    }
#endif
    MatmulSlice slice = base;
    slice.acts = &acts[0]->acts;
    quantize_rows(simd, x, 0, m, *slice.acts);
    for (int item = 0; item < plan.items(); ++item) run_item(simd, slice, plan, item, m);
}

bool parse_qtype(int value, QType* out) {
    if (qtype_from_int(value, out)) return true;
    PyErr_Format(PyExc_ValueError, "unknown quantization type id %d", value);
    return false;
}

bool check_shape(QType qtype, int n, int k) {
    if (n <= 0 || k <= 0 || k % raw_block_elems(qtype) != 0) {
        PyErr_Format(PyExc_ValueError, "shape (%d, %d) invalid: both positive, in_features a multiple of %d", n,
                     k, raw_block_elems(qtype));
        return false;
    }
    return true;
}

PyObject* py_simd_level(PyObject*, PyObject*) { return PyUnicode_FromString(cpu_has_avx2() ? "avx2" : "scalar"); }

PyObject* py_repacked_nbytes(PyObject*, PyObject* args) {
    int qtype_id, n, k;
    if (!PyArg_ParseTuple(args, "iii", &qtype_id, &n, &k)) return nullptr;
    QType qtype;
    if (!parse_qtype(qtype_id, &qtype) || !check_shape(qtype, n, k)) return nullptr;
    return PyLong_FromSize_t(repacked_bytes(qtype, n, k));
}

PyObject* py_repack(PyObject*, PyObject* args) {
    int qtype_id, n, k;
    unsigned long long raw_ptr, packed_ptr;
    if (!PyArg_ParseTuple(args, "iKiiK", &qtype_id, &raw_ptr, &n, &k, &packed_ptr)) return nullptr;
    QType qtype;
    if (!parse_qtype(qtype_id, &qtype) || !check_shape(qtype, n, k)) return nullptr;
    Py_BEGIN_ALLOW_THREADS
    repack_weight(qtype, reinterpret_cast<const uint8_t*>(raw_ptr), n, k, reinterpret_cast<uint8_t*>(packed_ptr));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyObject* py_matmul(PyObject*, PyObject* args) {
    int qtype_id, m, k, n, num_threads, use_simd;
    unsigned long long x_ptr, packed_ptr, y_ptr;
    if (!PyArg_ParseTuple(args, "iKiiKiKip", &qtype_id, &x_ptr, &m, &k, &packed_ptr, &n, &y_ptr, &num_threads,
                          &use_simd)) {
        return nullptr;
    }
    QType qtype;
    if (!parse_qtype(qtype_id, &qtype) || !check_shape(qtype, n, k)) return nullptr;
    if (m <= 0 || num_threads <= 0) {
        PyErr_Format(PyExc_ValueError, "need m > 0 and num_threads > 0, got m=%d num_threads=%d", m, num_threads);
        return nullptr;
    }
    if (use_simd && !cpu_has_avx2()) {
        PyErr_SetString(PyExc_ValueError, "the AVX2 kernels were requested but this CPU or build lacks AVX2/FMA/F16C");
        return nullptr;
    }
    bool failed = false;
    Py_BEGIN_ALLOW_THREADS
    try {
        run_matmul(qtype, reinterpret_cast<const float*>(x_ptr), m, k, reinterpret_cast<const uint8_t*>(packed_ptr),
                   n, reinterpret_cast<float*>(y_ptr), num_threads, use_simd != 0);
    } catch (const std::bad_alloc&) {
        failed = true;
    }
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    {"simd_level", py_simd_level, METH_NOARGS, "'avx2' when the AVX2+FMA+F16C kernels can run here, else 'scalar'."},
    {"repacked_nbytes", py_repacked_nbytes, METH_VARARGS, "repacked_nbytes(qtype_id, n, k) -> bytes of the layout"},
    {"repack", py_repack, METH_VARARGS, "repack(qtype_id, raw_ptr, n, k, packed_ptr): GGUF rows -> interleaved"},
    {"matmul", py_matmul, METH_VARARGS,
     "matmul(qtype_id, x_ptr, m, k, packed_ptr, n, y_ptr, num_threads, use_simd): y[m, n] = x @ W^T"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_quant_kernels", "GGUF block matmul kernels", -1, kMethods,
                       nullptr, nullptr, nullptr, nullptr};

}  // namespace
}  // namespace ember

PyMODINIT_FUNC PyInit__quant_kernels() { return PyModule_Create(&ember::kModule); }
