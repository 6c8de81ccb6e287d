"""The per-sequence state the model runner keeps between steps (random stream, grammar matcher, LoRA slot, an
embedding input's pooled sum), set up and let go of only from what the scheduler reports in each
SchedulerOutput: `added` (first scheduled) and `finished_ids`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.engine.pooling import MeanPool
from ember.engine.scheduler_output import SchedulerOutput
from ember.engine.sequence import Sequence
from ember.lora.adapter import LoraAdapter
from ember.lora.manager import LoraManager
from ember.structured.compiler import GrammarCompiler
from ember.structured.matcher import GrammarMatcher
from ember.structured.opening import OpeningRule


@dataclass
class RunnerSequence:
    """What the runner holds for one sequence while it lives."""

    sequence: Sequence  # read, never written here: the scheduler and the engine own its tokens and progress
    generator: torch.Generator | None  # a seeded sequence draws only from its own stream, whatever the batch
    matcher: GrammarMatcher | None  # where a constrained sequence stands in its grammar
    # its LoRA slot: the adapter its rows run with (pinned by the engine's request)
    adapter: LoraAdapter | None
    pool: MeanPool | None = None  # an embedding input's pooled hidden states so far
    # the decision its first output token takes by rule (a tool call or text); None once taken
    opening: OpeningRule | None = None


class RunnerStates:
    """RunnerSequences by sequence id."""

    def __init__(self, grammar_compiler: GrammarCompiler | None, lora_manager: LoraManager | None) -> None:
        self._grammar_compiler = grammar_compiler
        self._lora_manager = lora_manager
        self._states: dict[str, RunnerSequence] = {}

    def __len__(self) -> int:
        return len(self._states)

    def get(self, sequence_id: str) -> RunnerSequence | None:
        return self._states.get(sequence_id)

    def sequence_ids(self) -> set[str]:
        return set(self._states)

    def update(self, sched: SchedulerOutput) -> dict[str, str]:
        """Let go of the finished sequences, then set up the added ones (an id may be reused right after its
        sequence finished). Returns the sequences whose setup failed, with the reason.

        `preempted_ids` drop nothing: a preempted sequence keeps its output tokens and is recomputed, so its
        random stream must go on where it stopped, its grammar state stays true, and its adapter stays pinned.
        """
        for sequence_id in sched.finished_ids:
            self._states.pop(sequence_id, None)
        errors: dict[str, str] = {}
        for sequence in sched.added:
            try:
                self._states[sequence.sequence_id] = self._set_up(sequence)
            except Exception as exc:  # noqa: BLE001 - one sequence's setup must not fail the batch
                errors[sequence.sequence_id] = f"setting up the sequence failed: {exc}"
        return errors

    def _set_up(self, sequence: Sequence) -> RunnerSequence:
        generator = None
        if sequence.seed is not None and not sequence.sampling_params.greedy:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(sequence.seed)
        matcher = None
        if sequence.grammar is not None:
            if self._grammar_compiler is None:
                raise ValueError("the sequence has a grammar but this runner has no grammar compiler")
            matcher = GrammarMatcher(self._grammar_compiler.grammar_tokenizer, sequence.grammar)
        adapter = None
        if sequence.lora_key is not None:
            if self._lora_manager is None:
                raise ValueError("the sequence names a LoRA adapter but this runner has no adapter manager")
            adapter = self._lora_manager.adapter_for_key(sequence.lora_key)
        pool = MeanPool() if sequence.pooling else None
        opening = None
        structured = sequence.sampling_params.structured
        if matcher is not None and structured is not None and structured.opening is not None:
            if sequence.num_output_tokens == 0:
                assert self._grammar_compiler is not None
                opening = self._grammar_compiler.opening_rule(structured.opening)
        return RunnerSequence(sequence, generator, matcher, adapter, pool, opening)
