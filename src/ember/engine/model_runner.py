"""Turns one SchedulerOutput into tensors, runs the network once over the whole batch, and samples."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ember.engine.outputs import TokenLogprob
from ember.engine.sampler import Sampler, SamplingRow
from ember.engine.scheduler_output import ScheduledSequence, SchedulerOutput
from ember.engine.sequence import Sequence
from ember.lora.layers import LoraContext
from ember.lora.manager import LoraManager
from ember.models.attention_metadata import AttentionMetadata
from ember.structured.matcher import GrammarMatcher, allowed_token_masks


@dataclass
class ModelRunnerOutput:
    """What one step produced, keyed by sequence id (only sequences that sampled appear in `sampled`)."""

    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, TokenLogprob | None] = field(default_factory=dict)
    # sequence id -> (position of the first scored prompt token, logprobs of that and the following tokens)
    prompt_logprobs: dict[str, tuple[int, list[TokenLogprob]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # sequences whose sampling failed, with the reason


@dataclass
class BatchInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attn: AttentionMetadata
    sample_rows: list[int]  # index into the flattened batch of each sampling sequence's last token
    prompt_logprob_spans: dict[
        str, tuple[int, int]
    ]  # sequence id -> (first row, num rows) for prompt logprobs
    lora: LoraContext | None = None  # which rows run which adapter; None when every row is the base model


class ModelRunner:
    """Owns the network, its paged KV cache and the per-sequence random generators."""

    def __init__(
        self,
        network: torch.nn.Module,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
        device: torch.device,
        eos_token_ids: tuple[int, ...],
        lora_manager: LoraManager | None = None,
    ) -> None:
        self.network = network
        self.lora_manager = lora_manager
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.eos_token_ids = eos_token_ids
        self.sampler = Sampler()
        self._seeds: dict[str, int] = {}
        self._generators: dict[str, torch.Generator] = {}
        self._matchers: dict[str, GrammarMatcher] = {}

    @staticmethod
    def num_threads() -> int:
        """Compute threads of the forward: torch's intra-op pool, which the native kernels share."""
        return torch.get_num_threads()

    @staticmethod
    def set_num_threads(count: int) -> None:
        torch.set_num_threads(count)

    def register_seed(self, sequence_id: str, seed: int) -> None:
        """A seeded sequence draws only from its own generator, so the batch around it cannot change it."""
        self._seeds[sequence_id] = seed

    def register_matcher(self, sequence_id: str, matcher: GrammarMatcher) -> None:
        """A constrained sequence: each of its sampling rows gets the matcher's allowed-token mask."""
        self._matchers[sequence_id] = matcher

    def matcher(self, sequence_id: str) -> GrammarMatcher | None:
        return self._matchers.get(sequence_id)

    def release(self, sequence_id: str) -> None:
        self._seeds.pop(sequence_id, None)
        self._generators.pop(sequence_id, None)
        self._matchers.pop(sequence_id, None)

    def build_inputs(self, scheduled: list[ScheduledSequence], sequences: dict[str, Sequence]) -> BatchInputs:
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens: list[int] = []
        context_lens: list[int] = []
        sample_rows: list[int] = []
        spans: dict[str, tuple[int, int]] = {}
        bs = self.block_size
        for item in scheduled:
            n = len(item.token_ids)
            start = len(ids)
            ids.extend(item.token_ids)
            pos = range(item.start_position, item.start_position + n)
            positions.extend(pos)
            table = item.block_ids
            slots.extend(table[p // bs] * bs + p % bs for p in pos)
            query_lens.append(n)
            context_lens.append(item.start_position + n)
            if item.sample:
                sample_rows.append(start + n - 1)
            if item.needs_prompt_logprobs:
                spans[item.sequence_id] = (start, n)
        max_blocks = max(len(item.block_ids) for item in scheduled)
        # One tensor from padded lists: a tensor per row costs ~8 us each, a visible share of a 32-stream step.
        table = torch.tensor(
            [list(item.block_ids) + [0] * (max_blocks - len(item.block_ids)) for item in scheduled],
            dtype=torch.int64,
        )  # [S, max_blocks]
        qlens = torch.tensor(query_lens, dtype=torch.int64)
        start_loc = torch.zeros(len(scheduled) + 1, dtype=torch.int64)
        start_loc[1:] = torch.cumsum(qlens, 0)
        dev = self.device
        attn = AttentionMetadata(
            query_lens=query_lens,
            context_lens=context_lens,
            query_start_loc=start_loc.to(dev),
            context_lens_tensor=torch.tensor(context_lens, dtype=torch.int64, device=dev),
            block_tables=table.to(dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_size=bs,
        )
        return BatchInputs(
            input_ids=torch.tensor(ids, dtype=torch.int64, device=dev),
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            attn=attn,
            sample_rows=sample_rows,
            prompt_logprob_spans=spans,
            lora=self._lora_context(scheduled),
        )

    def _lora_context(self, scheduled: list[ScheduledSequence]) -> LoraContext | None:
        """Base rows and rows of several adapters share one forward; each adapter touches only its rows."""
        if all(item.lora_key is None for item in scheduled):
            return None
        if self.lora_manager is None:
            raise ValueError("a sequence names a LoRA adapter but this runner has no adapter manager")
        manager = self.lora_manager
        return LoraContext.for_batch(
            [
                (None if item.lora_key is None else manager.adapter_for_key(item.lora_key), item.num_tokens)
                for item in scheduled
            ]
        )

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput, sequences: dict[str, Sequence]) -> ModelRunnerOutput:
        batch = self.build_inputs(sched.scheduled, sequences)
        if batch.lora is None:
            hidden = self.network(batch.input_ids, batch.positions, batch.attn, self.kv_caches)  # [T, H]
        else:
            hidden = self.network(
                batch.input_ids, batch.positions, batch.attn, self.kv_caches, lora=batch.lora
            )
        out = ModelRunnerOutput()
        for item in sched.scheduled:
            if item.sequence_id in batch.prompt_logprob_spans:
                first, count = batch.prompt_logprob_spans[item.sequence_id]
                out.prompt_logprobs[item.sequence_id] = (
                    item.start_position + 1,
                    self._prompt_logprobs(
                        hidden[first : first + count], sequences[item.sequence_id], item.start_position
                    ),
                )
        samplers = [item for item in sched.scheduled if item.sample]
        if not samplers:
            return out
        logits = self.network.compute_logits(hidden[batch.sample_rows]).float()  # [S, V]
        rows = [self._sampling_row(sequences[item.sequence_id]) for item in samplers]
        self._apply_grammar_masks(samplers, rows, logits.shape[1])
        try:
            result = self.sampler(logits, rows)
            pairs = list(zip(samplers, result.token_ids, result.logprobs, strict=True))
        except Exception:  # noqa: BLE001 - isolate the failing row, keep the others
            pairs = []
            for i, (item, row) in enumerate(zip(samplers, rows, strict=True)):
                try:
                    single = self.sampler(logits[i : i + 1], [row])
                    pairs.append((item, single.token_ids[0], single.logprobs[0]))
                except Exception as exc:  # noqa: BLE001
                    out.errors[item.sequence_id] = f"sampling failed: {exc}"
        for item, token, logprob in pairs:
            out.sampled[item.sequence_id] = token
            out.logprobs[item.sequence_id] = logprob
        return out

    def _apply_grammar_masks(
        self, samplers: list[ScheduledSequence], rows: list[SamplingRow], vocab: int
    ) -> None:
        """Only constrained rows pay for a mask; the others keep allowed_token_ids_mask None."""
        constrained = [i for i, item in enumerate(samplers) if item.sequence_id in self._matchers]
        if not constrained:
            return
        matchers = [self._matchers[samplers[i].sequence_id] for i in constrained]
        masks = allowed_token_masks(matchers, vocab)  # [C, V]
        for k, i in enumerate(constrained):
            rows[i].allowed_token_ids_mask = masks[k]

    def _prompt_logprobs(self, hidden: torch.Tensor, sequence: Sequence, start: int) -> list[TokenLogprob]:
        """Row i (position start+i) predicts the token at start+i+1; only prompt tokens are scored."""
        prompt = sequence.prompt_token_ids
        targets = prompt[start + 1 : start + 1 + hidden.shape[0]]
        if not targets:
            return []
        logits = self.network.compute_logits(hidden[: len(targets)]).float()  # [P, V]
        k = sequence.sampling_params.prompt_logprobs or 0
        scored = self.sampler.prompt_logprobs(logits, prompt[start : start + 1 + len(targets)], k)
        return [lp for lp in scored if lp is not None]

    def _sampling_row(self, sequence: Sequence) -> SamplingRow:
        params = sequence.sampling_params
        generator = None
        seed = self._seeds.get(sequence.sequence_id)
        if seed is not None and not params.greedy:
            generator = self._generators.get(sequence.sequence_id)
            if generator is None:
                generator = torch.Generator(device="cpu")
                generator.manual_seed(seed)
                self._generators[sequence.sequence_id] = generator
        return SamplingRow(
            params=params,
            prompt_token_ids=sequence.prompt_token_ids,
            output_token_ids=sequence.output_token_ids,
            generator=generator,
            eos_token_ids=self.eos_token_ids,
            allowed_token_ids_mask=None,
        )

    @torch.inference_mode()
    def embed(self, token_ids: list[list[int]]) -> list[list[float]]:
        """Mean-pooled, L2-normalised final hidden states, one forward over all inputs, no KV cache."""
        if not token_ids or any(not ids for ids in token_ids):
            raise ValueError("every input to embed must have at least one token")
        lens = [len(ids) for ids in token_ids]
        flat = torch.tensor([t for ids in token_ids for t in ids], dtype=torch.int64, device=self.device)
        positions = torch.cat([torch.arange(n, dtype=torch.int64) for n in lens]).to(self.device)
        attn = AttentionMetadata.for_prefill_without_cache(lens)
        hidden = self.network(flat, positions, attn, None).float()  # [T, H]
        pooled = torch.stack([chunk.mean(0) for chunk in torch.split(hidden, lens)])  # [B, H]
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().tolist()
