// Python entry points (plain CPython API, no torch headers: tensors arrive as data pointers that the
// Python wrapper has validated). Picks the SIMD or scalar kernels at run time and splits the work over
// OpenMP threads. The wheel links libgomp.so.1, the same soname torch's bundled OpenMP runtime carries,
// so inside a process that imported torch first both share one runtime and one thread team.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <memory>
#include <new>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "decode_attention.h"
#include "decode_attention_batch.h"
#include "decode_lora.h"
#include "decode_step.h"
#include "kernel_isa.h"
#include "matmul_plan.h"
#include "prefill_attention.h"
#include "quant_layout.h"

namespace ember {
namespace {

bool cpu_has_avx2() { return cpu_supports(Isa::Avx2); }

// Runs a kernel call with the GIL released (the kernels run their own thread team); an allocation failure inside
// becomes Python's MemoryError, anything else returns None.
template <typename Work>
PyObject* run_without_gil(Work&& work) {
    bool failed = false;
    Py_BEGIN_ALLOW_THREADS
    try {
        work();
    } catch (const std::bad_alloc&) {
        failed = true;
    }
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

constexpr size_t kPrivateQuantize = 16384;  // up to this many activations every thread quantizes them itself

void run_item(Isa isa, const MatmulSlice& base, const WorkPlan& plan, int item) {
    matmul_slice_on(isa, plan.item_slice(base, item));
}

void run_matmul(QType qtype, const float* x, int m, int k, const uint8_t* packed, int n, float* y,
                int num_threads, Isa isa) {
    const WorkPlan plan = plan_work(m, n, num_threads);
    const bool private_quantize = static_cast<size_t>(m) * k <= kPrivateQuantize;
    // Small batches: each thread quantizes into its own buffer, so no thread waits at a barrier for another.
    const int buffers = private_quantize ? num_threads : 1;
    std::unique_ptr<std::unique_ptr<ActivationBuffer>[]> acts(new std::unique_ptr<ActivationBuffer>[buffers]);
    for (int i = 0; i < buffers; ++i) acts[i].reset(new ActivationBuffer(m, k));
    const MatmulSlice base{qtype, packed, n, k, nullptr, y, n, 0, 0, 0, 0};
#ifdef _OPENMP
    if (num_threads > 1) {
#pragma omp parallel num_threads(num_threads)
        {
            MatmulSlice slice = base;
            if (private_quantize) {
                slice.acts = &acts[omp_get_thread_num()]->acts;
                quantize_rows_on(isa, x, 0, m, *slice.acts);
            } else {
                slice.acts = &acts[0]->acts;
#pragma omp for schedule(static)
                for (int t = 0; t < m; ++t) quantize_rows_on(isa, x, t, t + 1, *slice.acts);
            }
#pragma omp for schedule(dynamic, 1) nowait
            for (int item = 0; item < plan.items(); ++item) run_item(isa, slice, plan, item);
        }
        return;
    }
#endif
    MatmulSlice slice = base;
    slice.acts = &acts[0]->acts;
    quantize_rows_on(isa, x, 0, m, *slice.acts);
    for (int item = 0; item < plan.items(); ++item) run_item(isa, slice, plan, item);
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

bool set_item(PyObject* d, const char* key, PyObject* value);

// {name: id} of the kernel families this build has and this CPU runs, most portable first ("scalar" always).
PyObject* py_isas(PyObject*, PyObject*) {
    PyObject* isas = PyDict_New();
    for (const Isa isa : kIsas) {
        if (isas == nullptr || !cpu_supports(isa)) continue;
        if (!set_item(isas, isa_name(isa), PyLong_FromLong(static_cast<int>(isa)))) Py_CLEAR(isas);
    }
    return isas;
}

// {name: id} of the instruction sets the fused step's attention runs on here (for a head_dim a multiple of 16;
// AVX-512 needs that), portable first; {} without the AVX2 build.
PyObject* py_attention_isas(PyObject*, PyObject*) {
    PyObject* isas = PyDict_New();
#if defined(EMBER_HAVE_AVX2)
    const std::pair<const char*, AttentionIsa> known[] = {{"avx2", AttentionIsa::kAvx2},
                                                          {"avx512", AttentionIsa::kAvx512}};
    for (const auto& [name, isa] : known) {
        AttentionIsa resolved;
        if (isas == nullptr || !cpu_has_avx2() || !attention_isa_from_int(static_cast<int>(isa), 16, &resolved)) {
            continue;
        }
        if (!set_item(isas, name, PyLong_FromLong(static_cast<int>(isa)))) Py_CLEAR(isas);
    }
#endif
    return isas;
}

// decode_attention(m, num_heads, num_kv_heads, head_dim, scale, q, key_cache, value_cache, block_tables,
// block_table_stride, context_lens, block_size, kv_dtype, out, attention_isa, num_threads, splits): the fused
// step's attention phase alone (decode_attention_batch.h), pointers as ints; the caller
// (ember.kernels.decode_attention) has checked the tensors behind them.
PyObject* py_decode_attention(PyObject*, PyObject* args) {
#if defined(EMBER_HAVE_AVX2)
    AttentionBatch b{};
    unsigned long long q, keys, values, tables, lens, out;
    long long stride;
    int dtype_id, isa_id, num_threads, splits;
    if (!PyArg_ParseTuple(args, "iiiifKKKKLKiiKiii", &b.m, &b.num_heads, &b.num_kv_heads, &b.head_dim, &b.scale, &q,
                          &keys, &values, &tables, &stride, &lens, &b.block_size, &dtype_id, &out, &isa_id,
                          &num_threads, &splits)) {
        return nullptr;
    }
    AttentionIsa isa;
    if (b.m < 1 || b.num_kv_heads < 1 || b.num_heads % b.num_kv_heads != 0 || b.head_dim < 8 ||
        b.head_dim % 8 != 0 || b.block_size < 1 || num_threads < 1 || !kv_dtype_from_int(dtype_id, &b.dtype) ||
        !cpu_has_avx2() || !attention_isa_from_int(isa_id, b.head_dim, &isa)) {
        PyErr_SetString(PyExc_ValueError, "decode_attention: bad dimensions, KV dtype or instruction set");
        return nullptr;
    }
    b.q = reinterpret_cast<const float*>(q);
    b.key_cache = reinterpret_cast<const uint8_t*>(keys);
    b.value_cache = reinterpret_cast<const uint8_t*>(values);
    b.block_tables = reinterpret_cast<const int64_t*>(tables);
    b.block_table_stride = stride;
    b.context_lens = reinterpret_cast<const int64_t*>(lens);
    b.out = reinterpret_cast<float*>(out);
    return run_without_gil([&] {
        decode_attention_batch(b, isa, num_threads, splits);
    });
#else
    (void)args;
    PyErr_SetString(PyExc_ValueError, "this build has no AVX2 kernels, so no decode attention");
    return nullptr;
#endif
}

// attention_runs(m, block_tables, block_table_stride, context_lens, block_size, num_threads, splits) -> the rows of
// each work item decode_attention would run with (decode_attention_runs), pointers as ints.
PyObject* py_attention_runs(PyObject*, PyObject* args) {
#if defined(EMBER_HAVE_AVX2)
    AttentionBatch b{};
    unsigned long long tables, lens;
    long long stride;
    int num_threads, splits;
    if (!PyArg_ParseTuple(args, "iKLKiii", &b.m, &tables, &stride, &lens, &b.block_size, &num_threads, &splits)) {
        return nullptr;
    }
    if (b.m < 1 || b.block_size < 1 || num_threads < 1) {
        PyErr_SetString(PyExc_ValueError, "attention_runs: bad dimensions");
        return nullptr;
    }
    b.block_tables = reinterpret_cast<const int64_t*>(tables);
    b.block_table_stride = stride;
    b.context_lens = reinterpret_cast<const int64_t*>(lens);
    const std::vector<int> rows = decode_attention_runs(b, num_threads, splits);
    PyObject* list = PyList_New(static_cast<Py_ssize_t>(rows.size()));
    for (size_t i = 0; list != nullptr && i < rows.size(); ++i) {
        PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), PyLong_FromLong(rows[i]));
    }
    return list;
#else
    (void)args;
    PyErr_SetString(PyExc_ValueError, "this build has no AVX2 kernels, so no decode attention");
    return nullptr;
#endif
}

// An Isa id from Python that this build and CPU can run; false with a ValueError set otherwise.
bool parse_isa(int value, Isa* out) {
    if (!isa_from_int(value, out)) {
        PyErr_Format(PyExc_ValueError, "unknown kernel instruction set id %d", value);
        return false;
    }
    if (!cpu_supports(*out)) {
        PyErr_Format(PyExc_ValueError, "the %s kernels were requested but this CPU or build lacks them",
                     isa_name(*out));
        return false;
    }
    return true;
}

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
    int qtype_id, m, k, n, num_threads, isa_id;
    unsigned long long x_ptr, packed_ptr, y_ptr;
    if (!PyArg_ParseTuple(args, "iKiiKiKii", &qtype_id, &x_ptr, &m, &k, &packed_ptr, &n, &y_ptr, &num_threads,
                          &isa_id)) {
        return nullptr;
    }
    QType qtype;
    if (!parse_qtype(qtype_id, &qtype) || !check_shape(qtype, n, k)) return nullptr;
    if (m <= 0 || num_threads <= 0) {
        PyErr_Format(PyExc_ValueError, "need m > 0 and num_threads > 0, got m=%d num_threads=%d", m, num_threads);
        return nullptr;
    }
    Isa isa;
    if (!parse_isa(isa_id, &isa)) return nullptr;
    return run_without_gil([&] {
        run_matmul(qtype, reinterpret_cast<const float*>(x_ptr), m, k, reinterpret_cast<const uint8_t*>(packed_ptr),
                   n, reinterpret_cast<float*>(y_ptr), num_threads, isa);
    });
}

// decode_step(layers_ptr, dims, batch, num_threads): dims = (num_layers, hidden, num_heads, num_kv_heads,
// head_dim, intermediate, block_size, eps, scale); batch = (m, x, out, final_norm, cos, sin, slots,
// block_tables, block_table_stride, context_lens, kv_caches, num_cache_blocks, kv_dtype) with every pointer an
// int and kv_dtype a KVDtype id (kv_format.h); then optionally the Isa id of the projections' matmuls (default
// AVX2), lora = None or (num_adapters, adapter tables, row adapters) of decode_lora.h, and the AttentionIsa id
// of the attention (decode_attention.h; default 0, the best this CPU runs).
PyObject* py_decode_step(PyObject*, PyObject* args) {
    unsigned long long layers_ptr;
    DecodeDims d{};
    unsigned long long x, out, final_norm, cos, sin, slots, block_tables, context_lens, kv_caches;
    long long stride, num_cache_blocks;
    int m, num_threads, kv_dtype;
    PyObject* lora_args = Py_None;
    if (!PyArg_ParseTuple(args, "K(iiiiiiiff)(iKKKKKKKLKKLi)i|iOi", &layers_ptr, &d.num_layers, &d.hidden, &d.num_heads,
                          &d.num_kv_heads, &d.head_dim, &d.intermediate, &d.block_size, &d.eps, &d.scale, &m, &x,
                          &out, &final_norm, &cos, &sin, &slots, &block_tables, &stride, &context_lens, &kv_caches,
                          &num_cache_blocks, &kv_dtype,
                          &num_threads, &d.matmul_isa, &lora_args, &d.attention_isa)) {
        return nullptr;
    }
    DecodeLora lora{};
    unsigned long long lora_tables = 0, lora_rows = 0;
    if (lora_args != Py_None &&
        !PyArg_ParseTuple(lora_args, "iKK", &lora.num_adapters, &lora_tables, &lora_rows)) {
        return nullptr;
    }
    lora.adapters = reinterpret_cast<const int64_t*>(lora_tables);
    lora.row_adapter = reinterpret_cast<const int64_t*>(lora_rows);
#if defined(EMBER_HAVE_AVX2)
    if (!cpu_has_avx2()) {
        PyErr_SetString(PyExc_ValueError, "the fused decode step needs AVX2/FMA/F16C, which this CPU lacks");
        return nullptr;
    }
    Isa matmul_isa;
    if (!parse_isa(d.matmul_isa, &matmul_isa)) return nullptr;
    if (matmul_isa == Isa::Scalar) {
        PyErr_SetString(PyExc_ValueError, "the fused decode step runs its matmuls on avx2 or avx512_vnni, not scalar");
        return nullptr;
    }
    AttentionIsa attention_isa;
    if (!attention_isa_from_int(d.attention_isa, d.head_dim, &attention_isa)) {
        PyErr_Format(PyExc_ValueError, "attention instruction set id %d is unknown, or this CPU, build or head_dim %d "
                     "cannot run it", d.attention_isa, d.head_dim);
        return nullptr;
    }
    const auto* layers = reinterpret_cast<const LayerTable*>(layers_ptr);
    if (const char* error = check_decode_tables(layers, d)) {
        PyErr_SetString(PyExc_ValueError, error);
        return nullptr;
    }
    if (m <= 0 || num_threads <= 0 || stride <= 0) {
        PyErr_SetString(PyExc_ValueError, "decode_step needs m > 0, num_threads > 0 and a block table");
        return nullptr;
    }
    const DecodeBatch batch{m,
                            reinterpret_cast<float*>(x),
                            reinterpret_cast<float*>(out),
                            reinterpret_cast<const float*>(final_norm),
                            reinterpret_cast<const float*>(cos),
                            reinterpret_cast<const float*>(sin),
                            reinterpret_cast<const int64_t*>(slots),
                            reinterpret_cast<const int64_t*>(block_tables),
                            stride,
                            reinterpret_cast<const int64_t*>(context_lens),
                            reinterpret_cast<const int64_t*>(kv_caches),
                            num_cache_blocks,
                            kv_dtype,
                            lora_args != Py_None ? &lora : nullptr};
    const char* error = check_decode_batch(d, batch);
    if (error == nullptr && batch.lora != nullptr) error = check_decode_lora(d, m, lora);
    if (error != nullptr) {
        PyErr_SetString(PyExc_ValueError, error);
        return nullptr;
    }
    return run_without_gil([&] {
        decode_step_avx2(layers, d, batch, num_threads);
    });
#else
    PyErr_SetString(PyExc_ValueError, "this build has no AVX2 kernels, so no fused decode step");
    return nullptr;
#endif
}

// prefill_attention(isa_id, (q, out, key_cache, value_cache, num_cache_blocks, block_tables, block_table_stride,
// query_starts, query_lens, context_lens), (num_seqs, num_heads, num_kv_heads, head_dim, block_size, kv_dtype,
// scale), num_threads): causal attention of prefill chunks over the paged cache (prefill_attention.h), every
// pointer an int, on the Avx2 or Avx512Vnni family (the latter runs the AVX-512 F code).
PyObject* py_prefill_attention(PyObject*, PyObject* args) {
    int isa_id, num_threads, kv_dtype;
    unsigned long long q, out, key_cache, value_cache, block_tables, query_starts, query_lens, context_lens;
    PrefillAttention p{};
    if (!PyArg_ParseTuple(args, "i(KKKKLKLKKK)(iiiiiif)i", &isa_id, &q, &out, &key_cache, &value_cache,
                          &p.num_cache_blocks, &block_tables, &p.block_table_stride, &query_starts, &query_lens,
                          &context_lens, &p.num_seqs, &p.num_heads, &p.num_kv_heads, &p.head_dim, &p.block_size,
                          &kv_dtype, &p.scale, &num_threads)) {
        return nullptr;
    }
    Isa isa;
    if (!parse_isa(isa_id, &isa)) return nullptr;
    if (isa == Isa::Scalar) {
        PyErr_SetString(PyExc_ValueError, "prefill_attention runs on avx2 or avx512_vnni, not scalar");
        return nullptr;
    }
    if (!kv_dtype_from_int(kv_dtype, &p.dtype)) {
        PyErr_Format(PyExc_ValueError, "unknown KV cache dtype id %d", kv_dtype);
        return nullptr;
    }
    if (num_threads <= 0) {
        PyErr_SetString(PyExc_ValueError, "prefill_attention needs num_threads > 0");
        return nullptr;
    }
    p.q = reinterpret_cast<const float*>(q);
    p.out = reinterpret_cast<float*>(out);
    p.key_cache = reinterpret_cast<const uint8_t*>(key_cache);
    p.value_cache = reinterpret_cast<const uint8_t*>(value_cache);
    p.block_tables = reinterpret_cast<const int64_t*>(block_tables);
    p.query_starts = reinterpret_cast<const int64_t*>(query_starts);
    p.query_lens = reinterpret_cast<const int64_t*>(query_lens);
    p.context_lens = reinterpret_cast<const int64_t*>(context_lens);
    if (const char* error = check_prefill_attention(p)) {
        PyErr_SetString(PyExc_ValueError, error);
        return nullptr;
    }
    return run_without_gil([&] {
#if defined(EMBER_HAVE_AVX512_VNNI)
        if (isa == Isa::Avx512Vnni) {
            prefill_attention_avx512(p, num_threads);
        } else
#endif
        {
#if defined(EMBER_HAVE_AVX2)
            prefill_attention_avx2(p, num_threads);
#endif
        }
    });
}

PyObject* py_decode_table_fields(PyObject*, PyObject*) { return PyLong_FromLong(kLayerTableFields); }

// Sets d[key] = value and drops the reference to value; false (with the Python error set) on failure.
bool set_item(PyObject* d, const char* key, PyObject* value) {
    if (value == nullptr) return false;
    const int failed = PyDict_SetItemString(d, key, value);
    Py_DECREF(value);
    return failed == 0;
}

// {"rows_per_group": 8, "block_values": 32, "qtypes": {name: {"id", "block_values", "block_bytes",
// "tile_bytes"}}}: the ids and sizes of quant_layout.h, so Python takes them from here instead of a copy.
PyObject* py_layout(PyObject*, PyObject*) {
    PyObject* layout = PyDict_New();
    PyObject* qtypes = PyDict_New();
    bool ok = layout != nullptr && qtypes != nullptr;
    for (const QType qtype : kQTypes) {
        if (!ok) break;
        PyObject* entry = PyDict_New();
        ok = entry != nullptr && set_item(entry, "id", PyLong_FromLong(static_cast<int>(qtype))) &&
             set_item(entry, "block_values", PyLong_FromLong(raw_block_elems(qtype))) &&
             set_item(entry, "block_bytes", PyLong_FromLong(raw_block_bytes(qtype))) &&
             set_item(entry, "tile_bytes", PyLong_FromLong(tile_bytes(qtype)));
        if (entry != nullptr) ok = PyDict_SetItemString(qtypes, qtype_name(qtype), entry) == 0 && ok;
        Py_XDECREF(entry);
    }
    ok = ok && set_item(layout, "rows_per_group", PyLong_FromLong(kRowsPerGroup)) &&
         set_item(layout, "block_values", PyLong_FromLong(kBlock));
    if (ok) {
        ok = PyDict_SetItemString(layout, "qtypes", qtypes) == 0;
    }
    Py_XDECREF(qtypes);
    if (!ok) {
        Py_XDECREF(layout);
        return nullptr;
    }
    return layout;
}

PyMethodDef kMethods[] = {
    {"decode_step", py_decode_step, METH_VARARGS,
     "decode_step(layers_ptr, dims, batch, num_threads): one fused decode step of the whole stack"},
    {"prefill_attention", py_prefill_attention, METH_VARARGS,
     "prefill_attention(isa_id, tensors, dims, num_threads): causal attention of prefill chunks over the paged cache"},
    {"decode_table_fields", py_decode_table_fields, METH_NOARGS, "int64 fields of one layer's table"},
    {"layout", py_layout, METH_NOARGS, "layout() -> the quantization type ids, block and tile sizes of the kernels"},
    {"simd_level", py_simd_level, METH_NOARGS, "'avx2' when the AVX2+FMA+F16C kernels can run here, else 'scalar'."},
    {"decode_attention", py_decode_attention, METH_VARARGS,
     "decode_attention(...): the fused step's attention over the paged cache alone (ember.kernels.decode_attention)"},
    {"attention_runs", py_attention_runs, METH_VARARGS,
     "attention_runs(m, block_tables_ptr, stride, context_lens_ptr, block_size, num_threads, splits) -> rows per item"},
    {"attention_isas", py_attention_isas, METH_NOARGS,
     "attention_isas() -> {name: id} of the sets the fused step's attention runs on here, portable first"},
    {"isas", py_isas, METH_NOARGS, "isas() -> {name: id} of the kernel families this build and CPU run, portable first"},
    {"repacked_nbytes", py_repacked_nbytes, METH_VARARGS, "repacked_nbytes(qtype_id, n, k) -> bytes of the layout"},
    {"repack", py_repack, METH_VARARGS, "repack(qtype_id, raw_ptr, n, k, packed_ptr): GGUF rows -> interleaved"},
    {"matmul", py_matmul, METH_VARARGS,
     "matmul(qtype_id, x_ptr, m, k, packed_ptr, n, y_ptr, num_threads, isa_id): y[m, n] = x @ W^T"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_quant_kernels", "GGUF block matmul kernels", -1, kMethods,
                       nullptr, nullptr, nullptr, nullptr};

}  // namespace
}  // namespace ember

PyMODINIT_FUNC PyInit__quant_kernels() { return PyModule_Create(&ember::kModule); }
