"""Verification of drafted tokens: k + 1 rows of logits per sequence from one forward, sampled exactly as k + 1
plain decode steps would have sampled them, keeping the drafts up to the first one the model disagrees with.

Row j scores the position after the sequence's tokens and drafts d_0..d_{j-1}. Its token x_j is drawn by the
Sampler with the same parameters, history (penalties see the drafts as output), grammar mask and uniform that
a plain decode step at that position would use. Draft d_j is accepted when x_j == d_j; the first x_j that
differs, or x_k after k accepted drafts, ends the run. For a deterministic draft this is the standard
speculative rejection rule in another form: d_j is kept with probability p(d_j), and otherwise the token comes
from p with d_j removed and renormalised (x_j given x_j != d_j). A seeded sequence draws one uniform per
emitted token from its own stream, as without drafts, so its output is the same with and without speculation
(up to floating-point differences between the forward paths); draws for rows past the end of the run are
given back. Greedy rows are argmax, so greedy output is identical too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.engine.outputs import TokenLogprob
from ember.engine.runner_states import RunnerSequence
from ember.engine.sampler import Sampler, SamplingRow
from ember.structured.matcher import GrammarMatcher, allowed_token_masks


@dataclass
class VerifiedTokens:
    """One sequence's verdict: the accepted drafts followed by the one token sampled after them."""

    token_ids: list[int]
    logprobs: list[TokenLogprob | None]
    num_drafted: int  # drafts verified (a draft the grammar rejects, and all after it, are not)

    @property
    def num_accepted(self) -> int:
        return len(self.token_ids) - 1

    def truncate(self, num_tokens: int) -> None:
        """Keep the first num_tokens (the sequence ends after them)."""
        del self.token_ids[num_tokens:]
        del self.logprobs[num_tokens:]


@dataclass
class DraftRows:
    """One sequence to verify: its state, its draft, and the first of its k + 1 rows of logits."""

    sequence_id: str
    state: RunnerSequence
    draft: list[int]
    first_row: int


def verify_drafts(
    sampler: Sampler,
    logits: torch.Tensor,
    entries: list[DraftRows],
    eos_token_ids: tuple[int, ...],
    shared_generator: torch.Generator | None = None,
) -> dict[str, VerifiedTokens]:
    """logits [R, V] fp32 holds rows first_row .. first_row + len(draft) of every entry."""
    rows: list[SamplingRow] = []
    starts: list[int] = []
    drafts: list[list[int]] = []
    saved: list[torch.Tensor | None] = []
    for entry in entries:
        sequence = entry.state.sequence
        matcher = entry.state.matcher
        draft = entry.draft
        masks = None
        if matcher is not None:
            draft, masks = _grammar_masks(matcher, draft, eos_token_ids, logits.shape[1])
        generator = entry.state.generator
        saved.append(generator.get_state() if generator is not None else None)
        starts.append(len(rows))
        drafts.append(draft)
        for j in range(len(draft) + 1):
            row = SamplingRow(
                params=sequence.sampling_params,
                prompt_token_ids=sequence.prompt_token_ids,
                output_token_ids=sequence.output_token_ids + draft[:j],
                eos_token_ids=eos_token_ids,
                allowed_token_ids_mask=None if masks is None else masks[j],
            )
            if not row.greedy:
                row.uniform = _draw(generator, shared_generator)
            rows.append(row)
    picks = [
        entry.first_row + j
        for entry, draft in zip(entries, drafts, strict=True)
        for j in range(len(draft) + 1)
    ]
    result = sampler(logits[picks], rows)  # [sum(k_i + 1)] tokens
    verdicts: dict[str, VerifiedTokens] = {}
    for entry, draft, start, state in zip(entries, drafts, starts, saved, strict=True):
        sampled = result.token_ids[start : start + len(draft) + 1]
        kept = 0
        while kept < len(draft) and sampled[kept] == draft[kept]:
            kept += 1
        tokens = sampled[: kept + 1]
        generator = entry.state.generator
        if generator is not None and state is not None and not rows[start].greedy:
            # give back the draws of rows past the end of the run: one draw per emitted token
            generator.set_state(state)
            for _ in tokens:
                _draw(generator, None)
        verdicts[entry.sequence_id] = VerifiedTokens(
            token_ids=tokens,
            logprobs=result.logprobs[start : start + kept + 1],
            num_drafted=len(draft),
        )
    return verdicts


def _draw(generator: torch.Generator | None, shared: torch.Generator | None) -> float:
    """One uniform exactly as the Sampler draws it for a row (float64, one at a time)."""
    return float(torch.rand(1, dtype=torch.float64, generator=generator or shared)[0])


def _grammar_masks(
    matcher: GrammarMatcher, draft: list[int], eos_token_ids: tuple[int, ...], vocab_size: int
) -> tuple[list[int], torch.Tensor]:
    """The part of the draft worth verifying under the grammar, and masks [len(part) + 1, V]: row j is what
    the grammar allows after the drafts before it. The part ends before the first token the grammar rejects,
    before an end-of-sequence token (llguidance's rollback does not count one), and before a token that
    completes the grammar: a plain decode ends right after that token without sampling another, so it is
    left to the run's last row, which samples it as a plain decode would (a row after it would allow nothing
    but EOS, which min_tokens or stop_token_ids may ban). The matcher walks the drafts and comes back, so it
    is where it was when this returns."""
    draft = draft[: matcher.num_valid(draft)]
    eos = set(eos_token_ids)
    masks = [allowed_token_masks([matcher], vocab_size)[0]]
    walked = 0
    kept = 0
    try:
        for token in draft:
            if token in eos:
                break
            matcher.accept(token)
            walked += 1
            if matcher.is_finished:
                break
            kept += 1
            masks.append(allowed_token_masks([matcher], vocab_size)[0])
    finally:
        matcher.rollback(walked)
    return draft[:kept], torch.stack(masks)
