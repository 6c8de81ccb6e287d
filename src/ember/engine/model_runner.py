"""Turns one SchedulerOutput into tensors, runs the network once over the whole batch, then samples, scores
prompt logprobs and pools embedding inputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ember.engine.batch_inputs import BatchInputs, build_batch_inputs
from ember.engine.forward_isolation import forward_each_alone
from ember.engine.forward_path import ForwardPath, NetworkForward
from ember.engine.outputs import TokenLogprob
from ember.engine.runner_states import RunnerSequence, RunnerStates
from ember.engine.sampler import Sampler, SamplingRow
from ember.engine.scheduler_output import ScheduledSequence, SchedulerOutput
from ember.engine.speculation.verify import DraftRows, VerifiedTokens, verify_drafts
from ember.lora.manager import LoraManager
from ember.structured.compiler import GrammarCompiler
from ember.structured.matcher import allowed_token_masks
from ember.structured.opening import decided_mask

logger = logging.getLogger(__name__)


@dataclass
class ModelRunnerOutput:
    """What one step produced, keyed by sequence id (only sequences that sampled appear in `sampled`)."""

    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, TokenLogprob | None] = field(default_factory=dict)
    # sequence id -> (position of the first scored prompt token, logprobs of that and the following tokens)
    prompt_logprobs: dict[str, tuple[int, list[TokenLogprob]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # sequences that failed this step, with the reason
    # constrained sequences whose grammar, with the token sampled now, admits nothing but end-of-sequence
    grammar_finished: set[str] = field(default_factory=set)
    # embedding inputs whose last chunk ran this step: their mean-pooled, L2-normalised final hidden state
    pooled: dict[str, list[float]] = field(default_factory=dict)
    forward_path: ForwardPath | None = None  # which forward ran the batch; None when nothing was scheduled
    # sequences that verified drafts (speculative decoding): their tokens this step, instead of `sampled`
    verified: dict[str, VerifiedTokens] = field(default_factory=dict)


class ModelRunner:
    """Owns the network, its paged KV cache and every sequence's runner-side state (RunnerStates), which it
    sets up and lets go of only as each SchedulerOutput says."""

    def __init__(
        self,
        network: torch.nn.Module,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
        device: torch.device,
        eos_token_ids: tuple[int, ...],
        lora_manager: LoraManager | None = None,
        grammar_compiler: GrammarCompiler | None = None,
        fused_decode: bool = True,
    ) -> None:
        self.network = network
        self.forward = NetworkForward(network, fused_decode)
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.eos_token_ids = eos_token_ids
        self.sampler = Sampler()
        self.states = RunnerStates(grammar_compiler, lora_manager)

    @staticmethod
    def num_threads() -> int:
        """Compute threads of the forward: torch's intra-op pool, which the native kernels share."""
        return torch.get_num_threads()

    @staticmethod
    def set_num_threads(count: int) -> None:
        torch.set_num_threads(count)

    @property
    def num_sequences(self) -> int:
        """Sequences the runner holds state for: 0 once every finish has been reported to it."""
        return len(self.states)

    def build_inputs(self, scheduled: list[ScheduledSequence]) -> BatchInputs:
        adapters = []
        for item in scheduled:
            state = self.states.get(item.sequence_id)
            adapters.append(None if state is None else state.adapter)
        return build_batch_inputs(scheduled, adapters, self.block_size, self.device)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        """Set up and let go of per-sequence state as `sched` says, then run what it schedules (if anything)."""
        out = ModelRunnerOutput(errors=self.states.update(sched))
        if not sched.scheduled:
            return out
        forwarded = self._forward(sched.scheduled, out)
        if forwarded is None:  # every sequence failed
            return out
        scheduled, batch, hidden = forwarded  # hidden [T, H]
        # a sequence whose setup or forward failed is in out.errors: it is neither scored, pooled nor sampled
        live = [
            (item, None if item.sequence_id in out.errors else self.states.get(item.sequence_id))
            for item in scheduled
        ]
        for item, state in live:
            if state is not None and item.sequence_id in batch.prompt_logprob_spans:
                first, count = batch.prompt_logprob_spans[item.sequence_id]
                out.prompt_logprobs[item.sequence_id] = (
                    item.start_position + 1,
                    self._prompt_logprobs(hidden[first : first + count], state, item.start_position),
                )
            if state is not None and state.pool is not None and item.sequence_id in batch.pool_spans:
                first, count = batch.pool_spans[item.sequence_id]
                state.pool.add_chunk(hidden[first : first + count], item.start_position)
                if item.start_position + count == state.sequence.num_prompt_tokens:
                    out.pooled[item.sequence_id] = state.pool.result()
        sample_rows = iter(batch.sample_rows)
        sampling = [(item, state, next(sample_rows)) for item, state in live if item.sample]
        ready = [(item, state, row) for item, state, row in sampling if state is not None]
        self._sample(out, [entry for entry in ready if not entry[0].draft_token_ids], hidden)
        self._verify(out, [entry for entry in ready if entry[0].draft_token_ids], hidden)
        return out

    def _forward(
        self, scheduled: list[ScheduledSequence], out: ModelRunnerOutput
    ) -> tuple[list[ScheduledSequence], BatchInputs, torch.Tensor] | None:
        """The batch's hidden states [T, H]. If the batched forward raises, every sequence runs alone
        (engine/forward_isolation.py): those that fail alone go to out.errors, the rest continue this step."""
        try:
            batch = self.build_inputs(scheduled)
            hidden, out.forward_path = self.forward(
                batch.input_ids, batch.positions, batch.attn, self.kv_caches, batch.lora
            )
            return scheduled, batch, hidden
        except Exception:  # noqa: BLE001 - narrowed to the sequences at fault below
            logger.exception(
                "the batched forward failed; running each of its %d sequences alone", len(scheduled)
            )

        def forward_one(item: ScheduledSequence) -> torch.Tensor:
            one = self.build_inputs([item])
            hidden, out.forward_path = self.forward(
                one.input_ids, one.positions, one.attn, self.kv_caches, one.lora
            )
            return hidden

        survivors, hiddens, errors = forward_each_alone(scheduled, forward_one, self.block_size)
        out.errors.update(errors)
        if not survivors:
            return None
        # build_batch_inputs lays each sequence's rows out contiguously in order: the same rows as the hiddens
        return survivors, self.build_inputs(survivors), torch.cat(hiddens)

    def _sample(
        self,
        out: ModelRunnerOutput,
        sampling: list[tuple[ScheduledSequence, RunnerSequence, int]],
        hidden: torch.Tensor,
    ) -> None:
        """Sample one token per (sequence, its state, its row of hidden); advance grammar matchers past it."""
        if not sampling:
            return
        logits = self.network.compute_logits(hidden[[row for _, _, row in sampling]]).float()  # [S, V]
        states = [state for _, state, _ in sampling]
        rows = [self._sampling_row(state) for state in states]
        self._apply_grammar_masks(states, rows, logits.shape[1])
        self._take_openings(states, rows, logits)
        try:
            result = self.sampler(logits, rows)
            drawn = list(zip(sampling, result.token_ids, result.logprobs, strict=True))
        except Exception:  # noqa: BLE001 - isolate the failing row, keep the others
            drawn = []
            for i, (entry, row) in enumerate(zip(sampling, rows, strict=True)):
                try:
                    single = self.sampler(logits[i : i + 1], [row])
                    drawn.append((entry, single.token_ids[0], single.logprobs[0]))
                except Exception as exc:  # noqa: BLE001
                    out.errors[entry[0].sequence_id] = f"sampling failed: {exc}"
        for (item, state, _), token, logprob in drawn:
            if state.matcher is not None:
                try:
                    state.matcher.accept(token)
                except Exception as exc:  # noqa: BLE001 - one sequence's failure must not stop the others
                    out.errors[item.sequence_id] = f"sampling failed: {exc}"
                    continue
                if state.matcher.is_finished:
                    out.grammar_finished.add(item.sequence_id)
            out.sampled[item.sequence_id] = token
            out.logprobs[item.sequence_id] = logprob

    def _verify(
        self,
        out: ModelRunnerOutput,
        drafted: list[tuple[ScheduledSequence, RunnerSequence, int]],
        hidden: torch.Tensor,
    ) -> None:
        """Speculative decoding: verify each sequence's draft from its k + 1 rows (engine/speculation)."""
        if not drafted:
            return
        entries: list[DraftRows] = []
        rows: list[int] = []
        for item, state, last_row in drafted:
            first_row = last_row - len(item.draft_token_ids)
            entries.append(DraftRows(item.sequence_id, state, item.draft_token_ids, len(rows)))
            rows.extend(range(first_row, last_row + 1))
        logits = self.network.compute_logits(hidden[rows]).float()  # [sum(k_i + 1), V]
        try:
            verdicts = verify_drafts(self.sampler, logits, entries, self.eos_token_ids)
        except Exception as exc:  # noqa: BLE001 - the rows of a failed verification fail, the others go on
            for entry in entries:
                out.errors[entry.sequence_id] = f"sampling failed: {exc}"
            return
        for entry in entries:
            verdict = verdicts[entry.sequence_id]
            matcher = entry.state.matcher
            if matcher is not None:
                try:
                    for i, token in enumerate(verdict.token_ids):
                        matcher.accept(token)
                        if matcher.is_finished:  # a plain decode would end here: so does the run
                            verdict.truncate(i + 1)
                            out.grammar_finished.add(entry.sequence_id)
                            break
                except Exception as exc:  # noqa: BLE001 - one sequence's failure must not stop the others
                    out.errors[entry.sequence_id] = f"sampling failed: {exc}"
                    continue
            out.verified[entry.sequence_id] = verdict

    @staticmethod
    def _apply_grammar_masks(states: list[RunnerSequence], rows: list[SamplingRow], vocab: int) -> None:
        """Only constrained rows pay for a mask; the others keep allowed_token_ids_mask None."""
        constrained = [i for i, state in enumerate(states) if state.matcher is not None]
        if not constrained:
            return
        masks = allowed_token_masks([states[i].matcher for i in constrained], vocab)  # type: ignore[misc]
        for k, i in enumerate(constrained):
            rows[i].allowed_token_ids_mask = masks[k]

    @staticmethod
    def _take_openings(states: list[RunnerSequence], rows: list[SamplingRow], logits: torch.Tensor) -> None:
        """A sequence whose first token decides by rule (a tool call or text, structured/opening.py): its row
        keeps only the tokens of the side the rule chose, judged on the model's raw logits."""
        for i, state in enumerate(states):
            rule = state.opening
            if rule is None:
                continue
            state.opening = None  # taken once, at the first output token
            if state.sequence.num_output_tokens:
                continue  # recomputed after a preemption: the first token was chosen long ago
            rows[i].allowed_token_ids_mask, _ = decided_mask(logits[i], rule, rows[i].allowed_token_ids_mask)

    def _prompt_logprobs(self, hidden: torch.Tensor, state: RunnerSequence, start: int) -> list[TokenLogprob]:
        """Row i (position start+i) predicts the token at start+i+1; only prompt tokens are scored."""
        sequence = state.sequence
        prompt = sequence.prompt_token_ids
        targets = prompt[start + 1 : start + 1 + hidden.shape[0]]
        if not targets:
            return []
        logits = self.network.compute_logits(hidden[: len(targets)]).float()  # [P, V]
        k = sequence.sampling_params.prompt_logprobs or 0
        scored = self.sampler.prompt_logprobs(logits, prompt[start : start + 1 + len(targets)], k)
        return [lp for lp in scored if lp is not None]

    def _sampling_row(self, state: RunnerSequence) -> SamplingRow:
        sequence = state.sequence
        return SamplingRow(
            params=sequence.sampling_params,
            prompt_token_ids=sequence.prompt_token_ids,
            output_token_ids=sequence.output_token_ids,
            generator=state.generator,
            eos_token_ids=self.eos_token_ids,
            allowed_token_ids_mask=None,
        )
