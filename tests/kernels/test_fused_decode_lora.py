"""LoRA adapter rows inside the fused decode step, against the module path (LayerLora after each projection) on
fresh random adapters: ranks 1 / 8 / 16, adapters on subsets of the projections, base rows and three adapters
in one step, speculative runs; greedy tokens through the engine; refusal of bad adapter tables."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from fused_models import (
    ALL,
    VARIANTS,
    DecodeBatch,
    Variant,
    adapters_for,
    build_models,
    decode_batch,
    forward,
    row_errors,
    verification_batch,
)

from ember.engine.forward_path import ForwardPath
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config, tiny_loaded_model
from ember.kernels import decode_step as native_step
from ember.kernels.decode_lora import StepLora
from ember.lora.adapter import LoraAdapter
from ember.lora.layers import LoraContext, attach_trainable_lora
from ember.models.fused_decode import FusedDecodeStack
from ember.models.llama import DecoderModel

pytestmark = pytest.mark.usefixtures("fused_decode_kernels")

# The K-quant variant's random blocks make weights ~10x those of random_weights: its adapters are made stronger
# so that their deltas still move the final hidden states by more than 1% (measured: 2-50% at 16, 0.3-4% at 1).
STRENGTHS = {"llama-mixed": 1.0, "qwen3-k-quants": 16.0}


# Mixed block formats inside q|k|v and GQA groups of 3; per-head q/k norms, head_dim 64, one kv head for 4.
@pytest.fixture(scope="module", params=[VARIANTS[0], VARIANTS[2]], ids=lambda v: v.name)
def models(request: pytest.FixtureRequest) -> tuple[Variant, DecoderModel, DecoderModel, list[LoraAdapter]]:
    kernel, reference = build_models(request.param)
    return request.param, kernel, reference, adapters_for(reference, 3, STRENGTHS[request.param.name])


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}threads")
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def spans(adapters: list[LoraAdapter], owners: list[int | None], counts: list[int]) -> LoraContext:
    context = LoraContext.for_batch(
        [(None if o is None else adapters[o], n) for o, n in zip(owners, counts, strict=True)]
    )
    assert context is not None
    return context


# m = 1 and 3 take the few-token mode on two threads (each thread keeps its own rows), 17 the shared one.
OWNERS = {1: [1], 3: [0, None, 2], 17: [None, 0, 1, 2, 1, None, 0, 2, 2, None, 1, 0, 0, None, 2, 1, None]}


@pytest.mark.parametrize("m", sorted(OWNERS))
def test_adapter_rows_match_the_module_path(
    models: tuple[Variant, DecoderModel, DecoderModel, list[LoraAdapter]], m: int, threads: int
) -> None:
    _, kernel, reference, adapters = models
    batch = decode_batch(kernel.config, m, seed=m + 10 * threads)
    owners = OWNERS[m]
    lora = spans(adapters, owners, [1] * m)
    fused, fused_caches, path = forward(kernel, batch, fused=True, lora=lora)
    assert path is ForwardPath.FUSED, "served adapters keep the step on the fused path"
    modules, module_caches, path = forward(kernel, batch, fused=False, lora=lora)
    assert path is ForwardPath.MODULES
    exact, _, _ = forward(reference, batch, fused=True, lora=lora)
    base, _, _ = forward(kernel, batch, fused=True, lora=None)

    # Same int8 rounding as the module path; the adapters' fp32 products differ only in summation order, which
    # now and then moves one activation across a rounding edge (one int8 step, < 2% of a row; measured ~1e-7 else).
    to_modules = row_errors(fused, modules)
    assert float(to_modules.max()) < 0.02
    assert float(to_modules.median()) < 1e-4
    assert float(row_errors(fused, exact).median()) < 0.03
    adapted = torch.tensor([o is not None for o in owners])
    moved = row_errors(fused, base)
    assert float(moved[adapted].min()) > 0.01, "every adapter row carries its adapter's deltas"
    if not bool(adapted.all()):
        assert float(moved[~adapted].max()) < 1e-6, "base rows are untouched by their neighbours' adapters"
    written = batch.attn.slot_mapping
    for (keys, values), (mk, mv) in zip(fused_caches, module_caches, strict=True):
        for ours, theirs in ((keys, mk), (values, mv)):
            new = ours.flatten(0, 1)[written].flatten(1)
            assert float(row_errors(new, theirs.flatten(0, 1)[written].flatten(1)).max()) < 0.02


@pytest.mark.parametrize("query_lens, owners", [([3, 1, 5], [0, None, 2]), ([4, 4], [1, 1])], ids=str)
def test_speculative_runs_with_adapters_run_fused(
    models: tuple[Variant, DecoderModel, DecoderModel, list[LoraAdapter]],
    query_lens: list[int],
    owners: list[int | None],
    threads: int,
) -> None:
    _, kernel, _, adapters = models
    batch = verification_batch(kernel.config, query_lens, seed=sum(query_lens) + threads)
    lora = spans(adapters, owners, query_lens)
    fused, _, path = forward(kernel, batch, fused=True, lora=lora)
    assert path is ForwardPath.FUSED
    modules, _, _ = forward(kernel, batch, fused=False, lora=lora)
    assert float(row_errors(fused, modules).max()) < 0.02


def test_a_training_context_takes_the_module_path(
    models: tuple[Variant, DecoderModel, DecoderModel, list[LoraAdapter]],
) -> None:
    """Trainable adapters (dropout, gradients) are the module path's: LayerLora is their reference."""
    _, kernel, _, _ = models
    trainable = attach_trainable_lora(kernel, 4, 8.0, 0.0, ALL, seed=1)
    batch = decode_batch(kernel.config, 2, seed=4)
    _, _, path = forward(kernel, batch, fused=True, lora=trainable.context())
    assert path is ForwardPath.MODULES


def test_engine_greedy_tokens_are_those_of_the_module_path() -> None:
    """Base requests and three adapters' requests decoded together: token for token the module path's output,
    with every decode step fused."""
    kernel, _ = build_models(VARIANTS[0], seed=7)
    loaded = dataclasses.replace(tiny_loaded_model("llama"), network=kernel, config=kernel.config)
    adapters = adapters_for(kernel, 11, strength=4.0)
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    gen = torch.Generator().manual_seed(5)
    lengths = [(9, None), (21, "all-r1"), (5, "qvd-r8"), (33, "kogu-r16"), (14, "all-r1"), (9, "qvd-r8")]
    jobs = [(torch.randint(3, 512, (n,), generator=gen).tolist(), lora) for n, lora in lengths]
    jobs.append((jobs[0][0], "kogu-r16"))  # request 0's prompt with an adapter

    def run(fused_decode: bool) -> tuple[list[list[int]], LLMEngine]:
        config = tiny_engine_config(prompt_lookup="off")
        # fp32 KV on both paths: the comparison is of the adapters, not of the cache formats' rounding
        cache = dataclasses.replace(config.cache, kv_cache_dtype="fp32")
        config = dataclasses.replace(config, cache=cache, fused_decode=fused_decode)
        engine = LLMEngine(loaded, config)
        for adapter in adapters:
            engine.register_lora(adapter.name, adapter)
        for i, (prompt, lora) in enumerate(jobs):
            engine.add_request(f"r{i}", prompt, greedy, lora_id=lora)
        tokens: dict[str, list[int]] = {}
        while engine.has_unfinished():
            for out in engine.step():
                if out.finished:
                    tokens[out.request_id] = list(out.outputs[0].token_ids)
        return [tokens[f"r{i}"] for i in range(len(jobs))], engine

    fused, engine = run(fused_decode=True)
    modules, _ = run(fused_decode=False)
    assert fused == modules
    assert fused[0] != fused[-1], "the adapter changes the greedy continuation"
    assert engine.stats.num_fused_steps == greedy.max_tokens, "every step (short prefills too) ran fused"


def _step_args(kernel: DecoderModel, batch: DecodeBatch, adapter: LoraAdapter) -> dict[str, object]:
    """A valid native call of 3 rows, all of them `adapter`'s."""
    context = LoraContext.for_batch([(adapter, 1)] * 3)
    assert context is not None
    fused = FusedDecodeStack.build(kernel)
    assert fused is not None and batch.attn.block_tables is not None and batch.attn.slot_mapping is not None
    cos, sin = kernel.rotary.cos_sin(batch.positions, torch.float32)
    return dict(
        layer_table=fused.table,
        dims=dataclasses.replace(fused.dims, block_size=batch.attn.block_size),
        x=kernel.embed_tokens(batch.input_ids),
        final_norm=fused.final_norm,
        cos=cos,
        sin=sin,
        slots=batch.attn.slot_mapping,
        block_tables=batch.attn.block_tables,
        context_lens=batch.attn.context_lens_tensor,
        kv_table=fused._kv_pointers(batch.caches),
        num_cache_blocks=batch.caches[0][0].shape[0],
        num_threads=2,
        lora=fused.lora_tables.step_lora(context, 3),
    )


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda lora: lora.row_adapter.__setitem__(1, 1), "adapter index lies outside"),
        (lambda lora: lora.row_adapter.__setitem__(0, -2), "adapter index lies outside"),
        (lambda lora: lora.tables.__setitem__(0, 0), "adapter table is missing"),
    ],
)
def test_bad_adapter_tables_are_refused_before_any_work(
    models: tuple[Variant, DecoderModel, DecoderModel, list[LoraAdapter]], break_it, message: str
) -> None:
    _, kernel, _, adapters = models
    batch = decode_batch(kernel.config, 3, seed=12)
    before = [(k.clone(), v.clone()) for k, v in batch.caches]
    with torch.inference_mode():
        args = _step_args(kernel, batch, adapters[1])
        lora = args["lora"]
        assert isinstance(lora, StepLora)
        break_it(lora)
        with pytest.raises(ValueError, match=message):
            native_step.decode_step(**args)  # type: ignore[arg-type]
    for (k, v), (bk, bv) in zip(batch.caches, before, strict=True):
        assert torch.equal(k, bk) and torch.equal(v, bv), "a refused step writes nothing"
