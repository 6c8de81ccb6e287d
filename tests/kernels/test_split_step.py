"""Steps that mix decodes with prefill chunks: short-context chunks run inside the fused step, long-context ones on
the modules beside it (ForwardPath.SPLIT), the rows put back in batch order. Checked against the unsplit module path
and the fp32 reference on fresh random inputs, with LoRA rows in the mix and KV written by one part read by the
other in the same step; then through the engine, where each request's greedy tokens, logprobs and prompt logprobs
must be what it gets alone, with grammar and adapter rows among them, and every KV block freed afterwards."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fused_models import VARIANTS, adapters_for, build_models, forward, row_errors, verification_batch

from ember.engine.forward_path import ForwardPath
from ember.engine.llm_engine import LLMEngine
from ember.engine.outputs import RequestOutput
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config, tiny_loaded_model
from ember.lora.layers import LoraContext
from ember.models.fused_decode import MAX_CHUNK_CONTEXT
from ember.structured.spec import StructuredSpec

pytestmark = pytest.mark.usefixtures("fused_decode_kernels")

# (new tokens, cached tokens) per sequence: decodes, a verification run, a short-context chunk (fused) and a chunk
# ending past MAX_CHUNK_CONTEXT (modules), in an order that interleaves the two parts.
RUNS = [(1, 20), (40, MAX_CHUNK_CONTEXT - 20), (5, 30), (1, 3), (30, 10), (1, 47)]
OWNERS = [0, 1, None, 2, 0, None]  # each sequence's adapter (None: the base model)


def test_a_mixed_step_splits_and_matches_the_unsplit_module_path() -> None:
    kernel, reference = build_models(VARIANTS[0], seed=2)
    adapters = adapters_for(reference, 5, strength=1.0)
    batch = verification_batch(kernel.config, [q for q, _ in RUNS], seed=9, cached=[c for _, c in RUNS])
    lora = LoraContext.for_batch(
        [(None if o is None else adapters[o], q) for o, (q, _) in zip(OWNERS, RUNS, strict=True)]
    )
    split, split_caches, path = forward(kernel, batch, fused=True, lora=lora)
    assert path is ForwardPath.SPLIT
    modules, module_caches, _ = forward(kernel, batch, fused=False, lora=lora)
    exact, _, _ = forward(reference, batch, fused=False, lora=lora)
    assert float(row_errors(split, modules).max()) < 0.03
    assert float(row_errors(split, exact).median()) < 0.03
    long_rows = slice(1, 41)  # the module part: computed as the unsplit module path computes it
    assert float(row_errors(split[long_rows], modules[long_rows]).max()) < 1e-5
    last_rows = torch.cumsum(torch.tensor([q for q, _ in RUNS]), 0) - 1
    logits = kernel.compute_logits(split[last_rows]).argmax(-1)
    assert torch.equal(logits, kernel.compute_logits(modules[last_rows]).argmax(-1)), "greedy tokens"
    written = batch.attn.slot_mapping
    assert written is not None
    for (keys, values), (mk, mv) in zip(split_caches, module_caches, strict=True):
        for ours, theirs in ((keys, mk), (values, mv)):
            new = ours.flatten(0, 1)[written].flatten(1)
            assert float(row_errors(new, theirs.flatten(0, 1)[written].flatten(1)).max()) < 0.02


def _shared_block_batch(decode_reads_chunk: bool, chunk_reads_decode: bool) -> object:
    """A fused decode and a long-context chunk; the decode's table holds a block the chunk writes this step (a
    prefix-cache hit on a block filled in the same step), and/or the other way round."""
    batch = verification_batch(
        build_models(VARIANTS[0], seed=2)[0].config, [1, 40], seed=4, cached=[40, MAX_CHUNK_CONTEXT]
    )
    attn = batch.attn
    assert attn.block_tables is not None and attn.slot_mapping is not None
    bs = attn.block_size
    chunk_block = int(attn.slot_mapping[-1]) // bs  # written by the chunk's last tokens
    decode_block = int(attn.slot_mapping[0]) // bs
    if decode_reads_chunk:
        attn.block_tables[0, 0] = chunk_block
    if chunk_reads_decode:
        attn.block_tables[1, 0] = decode_block
    return batch


@pytest.mark.parametrize(
    ("decode_reads_chunk", "chunk_reads_decode", "expected"),
    [
        (True, False, ForwardPath.SPLIT),
        (False, True, ForwardPath.SPLIT),
        (True, True, ForwardPath.MODULES),
    ],
    ids=["chunk-first", "decode-first", "both-ways"],
)
def test_kv_written_by_one_part_is_read_by_the_other(
    decode_reads_chunk: bool, chunk_reads_decode: bool, expected: ForwardPath
) -> None:
    """Each part sees the other's keys of this step, as one forward over the whole batch does: the writer runs
    first; when each reads the other's, the whole batch runs on the modules."""
    kernel, _ = build_models(VARIANTS[0], seed=2)
    batch = _shared_block_batch(decode_reads_chunk, chunk_reads_decode)
    ours, _, path = forward(kernel, batch, fused=True)  # type: ignore[arg-type]
    assert path is expected
    modules, _, _ = forward(kernel, batch, fused=False)  # type: ignore[arg-type]
    assert float(row_errors(ours, modules).max()) < 0.03


def _engine_outputs(
    jobs: list[tuple[str, list[int], SamplingParams, str | None]], together: bool
) -> tuple[dict[str, RequestOutput], LLMEngine]:
    kernel, _ = build_models(VARIANTS[0], seed=7, vocab_size=49152)
    loaded = dataclasses.replace(tiny_loaded_model("llama"), network=kernel, config=kernel.config)
    config = tiny_engine_config(prompt_lookup="off", max_num_batched_tokens=96)
    config = dataclasses.replace(config, cache=dataclasses.replace(config.cache, kv_cache_dtype="fp32"))
    engine = LLMEngine(loaded, config)
    for adapter in adapters_for(kernel, 11, strength=4.0):
        engine.register_lora(adapter.name, adapter)
    finished: dict[str, RequestOutput] = {}
    pending = list(jobs)
    steps = 0
    while pending or engine.has_unfinished():
        # together: a new request every third step, beside the running ones; alone: one after the other
        if pending and (not engine.has_unfinished() or (together and steps % 3 == 0)):
            rid, prompt, params, lora = pending.pop(0)
            engine.add_request(rid, prompt, params, lora_id=lora)
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        steps += 1
    return finished, engine


# A prompt is cut into other chunks beside other requests than alone, so a position may land in a chunk the
# fused step runs in one run and the modules in the other: the two paths agree to ~1e-2 in logprob.
PATH_LOGPROB_TOLERANCE = 0.02


def test_requests_in_mixed_steps_get_what_they_get_alone() -> None:
    """Greedy tokens of each request (adapter, grammar and base rows, prompts past MAX_CHUNK_CONTEXT) are the same
    in mixed (fused and split) steps as alone, their logprobs and prompt logprobs within the paths' agreement; no
    KV block is left held."""
    gen = torch.Generator().manual_seed(3)

    def prompt(n: int) -> list[int]:
        return torch.randint(3, 40000, (n,), generator=gen).tolist()

    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=2)
    choice = dataclasses.replace(greedy, structured=StructuredSpec("choice", '["yes", "no", "maybe"]'))
    scored = dataclasses.replace(greedy, prompt_logprobs=1)
    jobs = [
        ("base", prompt(9), greedy, None),
        ("long", prompt(MAX_CHUNK_CONTEXT + 60), scored, None),
        ("adapter", prompt(21), greedy, "all-r1"),
        ("grammar", prompt(14), choice, None),
        ("long-adapter", prompt(MAX_CHUNK_CONTEXT + 10), greedy, "kogu-r16"),
        ("short-scored", prompt(30), scored, "qvd-r8"),
    ]
    together, engine = _engine_outputs(jobs, together=True)
    alone, _ = _engine_outputs(jobs, together=False)
    stats = engine.stats
    assert stats.num_split_steps > 0 and stats.num_fused_steps > 0
    for rid, _, _, _ in jobs:
        ours, theirs = together[rid].outputs[0], alone[rid].outputs[0]
        assert ours.token_ids == theirs.token_ids, rid
        assert ours.logprobs is not None and theirs.logprobs is not None
        for a, b in zip(ours.logprobs, theirs.logprobs, strict=True):
            assert a is not None and b is not None
            assert abs(a.logprob - b.logprob) < PATH_LOGPROB_TOLERANCE, rid
        ours_prompt, theirs_prompt = together[rid].prompt_logprobs, alone[rid].prompt_logprobs
        assert (ours_prompt is None) == (theirs_prompt is None)
        if ours_prompt is not None and theirs_prompt is not None:
            pairs = [(a, b) for a, b in zip(ours_prompt, theirs_prompt, strict=True) if a is not None]
            assert len(pairs) == len(ours_prompt) - 1
            worst = max(abs(a.logprob - b.logprob) for a, b in pairs if b is not None)
            assert worst < PATH_LOGPROB_TOLERANCE, rid
    assert together["grammar"].outputs[0].text in ("yes", "no", "maybe")
    scheduler = engine.scheduler
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_usable_blocks
    engine.check_invariants()
