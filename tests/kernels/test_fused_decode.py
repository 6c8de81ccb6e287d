"""The fused decode step (the whole stack in one native call) against the exact fp32 path and the module-by-module
int8 kernel path, on tiny packed models of awkward shapes; and its refusal of bad batches."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from fused_models import (
    VARIANTS,
    DecodeBatch,
    Variant,
    build_models,
    decode_batch,
    forward,
    row_errors,
    verification_batch,
)

from ember import kernels
from ember.engine.forward_path import ForwardPath
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config, tiny_loaded_model
from ember.kernels import decode_step as native_step
from ember.kernels.kernel_isa import ISA_ENV, KernelIsaError
from ember.models.fused_decode import MAX_CHUNK_CONTEXT, MAX_QUERY_TOKENS, FusedDecodeStack
from ember.models.llama import DecoderModel

pytestmark = pytest.mark.usefixtures("fused_decode_kernels")


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v.name)
def models(request: pytest.FixtureRequest) -> tuple[Variant, DecoderModel, DecoderModel]:
    kernel, reference = build_models(request.param)
    return request.param, kernel, reference


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}threads")
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """Two threads take the few-token mode (every thread keeps its own rows) for M <= 4; one thread never does."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("m", [1, 3, 17, 64])
def test_fused_step_matches_the_reference_paths(
    models: tuple[Variant, DecoderModel, DecoderModel], m: int, threads: int
) -> None:
    _, kernel, reference = models
    batch = decode_batch(kernel.config, m, seed=m + threads)
    fused, fused_caches, path = forward(kernel, batch, fused=True)
    assert path is ForwardPath.FUSED, "the kernel model must take the fused path"
    modules, module_caches, path = forward(kernel, batch, fused=False)
    assert path is ForwardPath.MODULES
    exact, exact_caches, path = forward(reference, batch, fused=True)
    assert path is ForwardPath.MODULES, "the fp32 reference never takes the fused path"

    # The same int8 rounding as the module path: only the float summation order (of the attention and norms; the
    # matmuls return the same bits on every family) differs, which now and then moves one activation across a
    # rounding edge (one int8 step: up to 2% of a row of these 256-wide models, measured 0.7%).
    to_modules = row_errors(fused, modules)
    assert float(to_modules.max()) < 0.02
    assert float((to_modules < 1e-5).float().mean()) >= 0.5
    # Against fp32 the error is the int8 activations' (measured medians 0.5-1.6%), never worse than the module path.
    to_exact = row_errors(fused, exact)
    assert float(to_exact.median()) < 0.03
    assert float(to_exact.max()) <= float(row_errors(modules, exact).max()) + 0.02

    written = batch.attn.slot_mapping
    for (keys, values), (mk, mv), (ek, ev), (ok, ov) in zip(
        fused_caches, module_caches, exact_caches, batch.caches, strict=True
    ):
        for ours, module, exact_cache, original in ((keys, mk, ek, ok), (values, mv, ev, ov)):
            flat = ours.flatten(0, 1)  # [slots, kv_heads, head_dim]
            new = flat[written].flatten(1)  # [M, kv_heads * head_dim]
            assert float(row_errors(new, module.flatten(0, 1)[written].flatten(1)).max()) < 0.02
            assert float(row_errors(new, exact_cache.flatten(0, 1)[written].flatten(1)).median()) < 0.03
            untouched = torch.ones(flat.shape[0], dtype=torch.bool)
            untouched[written] = False
            assert torch.equal(flat[untouched], original.flatten(0, 1)[untouched]), (
                "only the new slots change"
            )


@pytest.mark.parametrize("query_lens", [[2], [1, 9, 3], [5, 1, 1, 16], [4, 4]], ids=str)
def test_runs_of_new_tokens_over_a_cached_context_run_fused(
    models: tuple[Variant, DecoderModel, DecoderModel], query_lens: list[int], threads: int
) -> None:
    """Speculative verification's rows (a sequence's drafted tokens, each attending to the ones before it) run
    fused and match the module path, which attends to them as a causal chunk; the cache gets the same keys."""
    _, kernel, _ = models
    batch = verification_batch(kernel.config, query_lens, seed=sum(query_lens) + threads)
    fused, fused_caches, path = forward(kernel, batch, fused=True)
    assert path is ForwardPath.FUSED
    modules, module_caches, _ = forward(kernel, batch, fused=False)
    assert float(row_errors(fused, modules).max()) < 0.02
    written = batch.attn.slot_mapping
    for (keys, values), (mk, mv) in zip(fused_caches, module_caches, strict=True):
        for ours, theirs in ((keys, mk), (values, mv)):
            new = ours.flatten(0, 1)[written].flatten(1)
            assert float(row_errors(new, theirs.flatten(0, 1)[written].flatten(1)).max()) < 0.02


def test_a_long_chunk_runs_fused_over_a_short_context_and_on_the_modules_over_a_long_one(
    models: tuple[Variant, DecoderModel, DecoderModel],
) -> None:
    """A prefill chunk longer than MAX_QUERY_TOKENS runs fused while its context ends within MAX_CHUNK_CONTEXT
    (each token a row); one token further it is the module path's (attention as a GEMM), exactly."""
    _, kernel, reference = models
    run = MAX_QUERY_TOKENS + 1
    short = verification_batch(kernel.config, [run], seed=5, cached=[MAX_CHUNK_CONTEXT - run])
    fused, _, path = forward(kernel, short, fused=True)
    assert path is ForwardPath.FUSED
    modules, _, _ = forward(kernel, short, fused=False)
    exact, _, _ = forward(reference, short, fused=False)
    assert float(row_errors(fused, modules).max()) < 0.03
    assert float(row_errors(fused, exact).median()) < 0.03
    long = verification_batch(kernel.config, [run], seed=5, cached=[MAX_CHUNK_CONTEXT - run + 1])
    fused, _, path = forward(kernel, long, fused=True)
    assert path is ForwardPath.MODULES
    modules, _, _ = forward(kernel, long, fused=False)
    assert torch.equal(fused, modules)


def _step_args(kernel: DecoderModel, batch: DecodeBatch) -> dict[str, object]:
    fused = FusedDecodeStack.build(kernel)
    assert fused is not None
    h = kernel.embed_tokens(batch.input_ids)
    cos, sin = kernel.rotary.cos_sin(batch.positions, torch.float32)
    assert batch.attn.block_tables is not None and batch.attn.slot_mapping is not None
    return dict(
        layer_table=fused.table,
        dims=dataclasses.replace(fused.dims, block_size=batch.attn.block_size),  # as run() sets it per step
        x=h,
        final_norm=fused.final_norm,
        cos=cos,
        sin=sin,
        slots=batch.attn.slot_mapping.clone(),
        block_tables=batch.attn.block_tables.clone(),
        context_lens=batch.attn.context_lens_tensor.clone(),
        kv_table=fused._kv_pointers(batch.caches),
        num_cache_blocks=batch.caches[0][0].shape[0],
        num_threads=2,
    )


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda a: a["block_tables"].__setitem__((1, 0), 10_000), "block id lies outside"),
        (lambda a: a["slots"].__setitem__(0, -1), "slot lies outside"),
        (lambda a: a["context_lens"].__setitem__(2, 10_000), "context length does not fit"),
        (lambda a: a.__setitem__("slots", a["slots"].to(torch.int32)), "slots must be a contiguous int64"),
        (lambda a: a.__setitem__("x", a["x"][:, :8].contiguous()), "x must be a contiguous float32"),
    ],
)
def test_bad_batches_are_refused_before_any_work(
    models: tuple[Variant, DecoderModel, DecoderModel], break_it, message: str
) -> None:
    _, kernel, _ = models
    batch = decode_batch(kernel.config, 3, seed=11)
    with torch.inference_mode():
        args = _step_args(kernel, batch)
        before = [(k.clone(), v.clone()) for k, v in batch.caches]
        break_it(args)
        with pytest.raises(ValueError, match=message):
            native_step.decode_step(**args)  # type: ignore[arg-type]
    for (k, v), (bk, bv) in zip(batch.caches, before, strict=True):
        assert torch.equal(k, bk) and torch.equal(v, bv), "a refused step writes nothing"
    fused, _, path = forward(kernel, batch, fused=True)  # and the model keeps serving
    assert path is ForwardPath.FUSED and bool(torch.isfinite(fused).all())


@pytest.mark.parametrize("fused_decode", [True, False], ids=["fused-on", "fused-off"])
def test_the_engine_counts_the_forward_each_step_ran(fused_decode: bool) -> None:
    """The runner picks the path; the step stats say which ran: the prefill step (short contexts) and the decodes
    fused when the engine allows it, every step on the modules when it does not."""
    kernel, _ = build_models(VARIANTS[0])
    loaded = dataclasses.replace(tiny_loaded_model("llama"), network=kernel, config=kernel.config)
    engine = LLMEngine(  # one token per step: speculation would fold decodes into fewer steps
        loaded, dataclasses.replace(tiny_engine_config(prompt_lookup="off"), fused_decode=fused_decode)
    )
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    engine.add_request("a", [5, 6, 7, 8, 9], greedy)
    engine.add_request("b", list(range(20, 60)), greedy)
    while engine.has_unfinished():
        engine.step()
    stats = engine.stats
    assert stats.num_steps == 6 and stats.num_fused_steps + stats.num_module_steps == stats.num_steps
    assert (stats.num_module_steps, stats.num_fused_steps) == ((0, 6) if fused_decode else (6, 0))


FUSED_ISAS = [isa for isa in kernels.supported_isas_here() if isa != "scalar"]


@pytest.mark.parametrize("isa", FUSED_ISAS)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_every_kernel_family_this_cpu_has_runs_the_fused_step(
    variant: Variant, isa: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMBER_KERNEL_ISA set before the load picks the family (the test ids say which ran here); the fused step
    and the module path then both run on it and match the fp32 model, for token counts past every register tile."""
    monkeypatch.setenv(ISA_ENV, isa)
    kernel, reference = build_models(variant, seed=3)
    stack = FusedDecodeStack.build(kernel)
    assert stack is not None and stack.isa == isa
    for m in (1, 9, 33):
        batch = decode_batch(kernel.config, m, seed=m)
        fused, _, path = forward(kernel, batch, fused=True)
        assert path is ForwardPath.FUSED
        modules, _, _ = forward(kernel, batch, fused=False)
        exact, _, _ = forward(reference, batch, fused=True)
        assert float(row_errors(fused, modules).max()) < 0.03
        assert float(row_errors(fused, exact).median()) < 0.03


def test_scalar_kernels_leave_the_fused_step_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ISA_ENV, "scalar")
    kernel, _ = build_models(VARIANTS[0])
    assert FusedDecodeStack.build(kernel) is None
    _, _, path = forward(kernel, decode_batch(kernel.config, 2, seed=1), fused=True)
    assert path is ForwardPath.MODULES


def test_an_unknown_kernel_family_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ISA_ENV, "avx9000")
    with pytest.raises(KernelIsaError, match=r"EMBER_KERNEL_ISA='avx9000' is not one of auto, scalar, avx2"):
        build_models(VARIANTS[0])
