"""Batched next-token sampling with per-request parameters.

Order per row: logit_bias, min_tokens masking, allowed-token mask, repetition penalty, presence/frequency
penalties, then either greedy argmax (temperature 0) or temperature, top_k, top_p, min_p, typical_p and a
draw. Every step is row-wise, and a seeded row takes its randomness only from its own generator, so it
samples the same tokens whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.engine import penalties
from ember.engine.logprobs import gather_token_logprobs, prompt_token_logprobs
from ember.engine.outputs import TokenLogprob
from ember.engine.sampling_params import SamplingParams

# Candidate widths tried, in order, before a full sort when finding a top_p / typical_p set: a full sort of a
# 49k vocabulary costs ~2 ms per row here, topk(256) ~0.1 ms, and the set is almost always that small.
_NUCLEUS_WIDTHS = (256, 4096)
# Below this temperature logits / T overflows fp32 or differs from argmax only on near-ties: sample greedily,
# as vLLM does.
_GREEDY_TEMPERATURE = 1e-5


@dataclass
class SamplingRow:
    """One sequence to sample for, with the history its penalties need."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None = None  # seeded sequences: their only source of randomness
    eos_token_ids: tuple[int, ...] = ()
    allowed_token_ids_mask: torch.Tensor | None = None  # [V] bool; tokens outside it get -inf
    # the draw's uniform in [0, 1), given by the caller instead of taken from a generator (speculative
    # verification draws a sequence's uniforms itself, so it can give back those it does not use)
    uniform: float | None = None

    @property
    def banned_token_ids(self) -> list[int]:
        """Tokens that would end the sequence before min_tokens; an ignored EOS ends nothing, so it stays."""
        if len(self.output_token_ids) >= self.params.min_tokens:
            return []
        eos = [] if self.params.ignore_eos else list(self.eos_token_ids)
        return eos + list(self.params.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return _is_greedy(self.params)

    @property
    def adjusts_logits(self) -> bool:
        """Whether anything before temperature changes this row's logits."""
        p = self.params
        return bool(
            p.logit_bias
            or self.banned_token_ids
            or self.allowed_token_ids_mask is not None
            or p.repetition_penalty != 1.0
            or p.presence_penalty != 0.0
            or p.frequency_penalty != 0.0
        )


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one per row
    logprobs: list[TokenLogprob | None]  # None for rows whose params.logprobs is None


class Sampler:
    """Samples one token per row of a [N, V] fp32 logits tensor.

    `generator` feeds the rows without a generator of their own (one shared draw per call); None uses
    torch's default generator.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self._generator = generator

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        if logits.dim() != 2 or logits.dtype != torch.float32:
            raise ValueError(
                f"logits must be a [N, V] float32 tensor, got {logits.dtype} {tuple(logits.shape)}"
            )
        if logits.shape[0] != len(rows):
            raise ValueError(f"got {logits.shape[0]} logits rows for {len(rows)} sampling rows")
        if not rows:
            return SamplerOutput(token_ids=[], logprobs=[])

        wants_logprobs = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
        raw_logprobs = torch.log_softmax(logits[wants_logprobs], dim=-1) if wants_logprobs else None  # [L, V]

        adjusted = [i for i, row in enumerate(rows) if row.adjusts_logits]
        if adjusted:
            logits = logits.clone(memory_format=torch.contiguous_format)  # penalties index it flat
            _adjust_logits(logits, rows, adjusted)

        greedy = [i for i, row in enumerate(rows) if row.greedy]
        if len(greedy) == len(rows):
            token_ids = logits.argmax(dim=-1)  # [N]
        else:
            token_ids = torch.empty(len(rows), dtype=torch.int64)  # [N]
            if greedy:
                token_ids[greedy] = logits[greedy].argmax(dim=-1)
            random = [i for i, row in enumerate(rows) if not row.greedy]
            token_ids[random] = self._sample(logits[random], [rows[i] for i in random])

        logprobs: list[TokenLogprob | None] = [None] * len(rows)
        if raw_logprobs is not None:
            gathered = gather_token_logprobs(
                raw_logprobs,
                token_ids[wants_logprobs],
                [rows[i].params.logprobs or 0 for i in wants_logprobs],
            )
            for i, entry in zip(wants_logprobs, gathered, strict=True):
                logprobs[i] = entry
        return SamplerOutput(token_ids=token_ids.tolist(), logprobs=logprobs)

    def prompt_logprobs(
        self, logits: torch.Tensor, prompt_token_ids: list[int], k: int
    ) -> list[TokenLogprob | None]:
        """Raw logprobs of prompt tokens (echo + logprobs); row i of `logits` [P, V] scores token i + 1,
        so len(prompt_token_ids) == P + 1 and the first entry is None."""
        return prompt_token_logprobs(logits, prompt_token_ids, k)

    def _sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """Token ids [R] drawn from the truncated, temperature-scaled distributions of logits [R, V]."""
        num_rows = logits.shape[0]
        logits = scale_and_truncate(logits, [row.params for row in rows])  # [R, V]
        # Inverse-CDF draw: one uniform per row, so a seeded row consumes the same randomness in any batch.
        cdf = torch.softmax(logits, dim=-1).double().cumsum(dim=-1)  # [R, V]
        total = cdf[:, -1]  # [R]
        if not torch.isfinite(total).all():
            raise ValueError("logits contain NaN or +inf; cannot sample")
        uniforms = torch.empty(num_rows, dtype=torch.float64)  # [R]
        shared = [i for i, row in enumerate(rows) if row.generator is None and row.uniform is None]
        if shared:
            uniforms[shared] = torch.rand(len(shared), dtype=torch.float64, generator=self._generator)
        for i, row in enumerate(rows):
            if row.uniform is not None:
                uniforms[i] = row.uniform
            elif row.generator is not None:
                uniforms[i] = torch.rand(1, dtype=torch.float64, generator=row.generator)[0]
        # The first index whose cumulative mass exceeds the target; zero-probability tokens never qualify.
        # Keeping the target strictly below the total guards against u * total rounding up to it.
        targets = torch.minimum(uniforms * total, torch.nextafter(total, torch.zeros_like(total)))  # [R]
        return torch.searchsorted(cdf, targets.unsqueeze(1), right=True).squeeze(1)


def scale_and_truncate(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, then top_k, top_p, min_p and typical_p, for sampled (non-greedy) rows of logits [R, V].

    Returns a new [R, V] tensor in which removed tokens are -inf; each filter sees the distribution the
    previous ones left, and a filter whose parameter is at its neutral value leaves a row untouched.
    """
    if len(params) != logits.shape[0]:
        raise ValueError(f"got {logits.shape[0]} logits rows for {len(params)} sampling params")
    if any(_is_greedy(p) for p in params):
        raise ValueError(
            f"temperatures below {_GREEDY_TEMPERATURE} mean greedy argmax: no distribution to truncate"
        )
    vocab_size = logits.shape[1]
    temperatures = torch.tensor([p.temperature for p in params], dtype=logits.dtype)
    logits = logits / temperatures.unsqueeze(1)  # [R, V]

    top_k_rows = [i for i, p in enumerate(params) if 0 < p.top_k < vocab_size]
    if top_k_rows:
        ks = torch.tensor([params[i].top_k for i in top_k_rows])
        _remove(logits, top_k_rows, _top_k_removal(_select(logits, top_k_rows), ks))
    top_p_rows = [i for i, p in enumerate(params) if p.top_p < 1.0]
    if top_p_rows:
        probs = torch.softmax(_select(logits, top_p_rows), dim=-1)  # [S, V]
        mass = torch.tensor([params[i].top_p for i in top_p_rows], dtype=torch.float64)
        _remove(logits, top_p_rows, _smallest_set_removal(probs, probs, mass))
    min_p_rows = [i for i, p in enumerate(params) if p.min_p > 0.0]
    if min_p_rows:
        probs = torch.softmax(_select(logits, min_p_rows), dim=-1)  # [S, V]
        min_p = torch.tensor([params[i].min_p for i in min_p_rows], dtype=probs.dtype).unsqueeze(1)
        _remove(logits, min_p_rows, probs < min_p * probs.amax(dim=-1, keepdim=True))
    typical_rows = [i for i, p in enumerate(params) if p.typical_p < 1.0]
    if typical_rows:
        mass = torch.tensor([params[i].typical_p for i in typical_rows], dtype=torch.float64)
        _remove(logits, typical_rows, _typical_removal(_select(logits, typical_rows), mass))
    return logits


def _is_greedy(params: SamplingParams) -> bool:
    return params.temperature < _GREEDY_TEMPERATURE


def _adjust_logits(logits: torch.Tensor, rows: list[SamplingRow], adjusted: list[int]) -> None:
    """Everything before temperature, in place, for the rows listed in `adjusted`."""
    chosen = [(i, rows[i]) for i in adjusted]
    penalties.apply_logit_bias(
        logits, [(i, row.params.logit_bias) for i, row in chosen if row.params.logit_bias]
    )
    penalties.ban_tokens(
        logits,
        [(i, row.banned_token_ids) for i, row in chosen if row.banned_token_ids and _ban_leaves_choice(row)],
    )
    penalties.restrict_to_allowed(
        logits,
        [(i, row.allowed_token_ids_mask) for i, row in chosen if row.allowed_token_ids_mask is not None],
    )
    masked = [i for i, row in chosen if row.banned_token_ids or row.allowed_token_ids_mask is not None]
    empty = (
        torch.isneginf(_select(logits, masked)).all(dim=-1) if masked else torch.zeros(0, dtype=torch.bool)
    )
    if empty.any():
        row = masked[int(empty.nonzero()[0])]
        raise ValueError(
            f"row {row}: every token is masked (min_tokens and allowed_token_ids_mask leave no choice)"
        )
    repeat = [(i, row) for i, row in chosen if row.params.repetition_penalty != 1.0]
    penalties.apply_repetition_penalty(
        logits,
        [i for i, _ in repeat],
        [row.prompt_token_ids + row.output_token_ids for _, row in repeat],
        [row.params.repetition_penalty for _, row in repeat],
    )
    counted = [
        (i, row)
        for i, row in chosen
        if row.params.presence_penalty != 0.0 or row.params.frequency_penalty != 0.0
    ]
    penalties.apply_presence_frequency_penalties(
        logits,
        [i for i, _ in counted],
        [row.output_token_ids for _, row in counted],
        [row.params.presence_penalty for _, row in counted],
        [row.params.frequency_penalty for _, row in counted],
    )


def _ban_leaves_choice(row: SamplingRow) -> bool:
    """Whether min_tokens' ban of EOS and stop tokens leaves the grammar a token to choose. When the grammar
    allows nothing else (its output can only end, or go on through a stop token), the grammar wins: the ban
    is lifted for this step instead of failing the request (a stop token is then kept as text before
    min_tokens, as it would be anyway)."""
    mask = row.allowed_token_ids_mask
    if mask is None:
        return True
    free = mask.clone()
    banned = [t for t in row.banned_token_ids if 0 <= t < free.shape[0]]
    free[banned] = False
    return bool(free.any())


def _select(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The listed rows of logits [R, V]; the tensor itself (no copy) when they are all of them in order."""
    return logits if len(rows) == logits.shape[0] else logits[rows]


def _remove(logits: torch.Tensor, rows: list[int], removal: torch.Tensor) -> None:
    """Set the tokens marked in removal [S, V] to -inf in the listed rows of logits [R, V], in place."""
    if len(rows) == logits.shape[0]:
        logits.masked_fill_(removal, float("-inf"))
    else:
        logits[rows] = logits[rows].masked_fill(removal, float("-inf"))


def _top_k_removal(logits: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """[S, V] True below each row's ks[i]-th highest logit (ties with it stay)."""
    top_values, _ = logits.topk(int(ks.max()), dim=-1)  # [S, K], descending
    kth = top_values.gather(1, (ks - 1).unsqueeze(1))  # [S, 1]
    return logits < kth


def _smallest_set_removal(order: torch.Tensor, probs: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """[S, V] True outside the fewest tokens, taken in decreasing `order`, whose probs add up to >= mass[i].

    Tries a few top-k widths before a full sort; a row is settled once its candidates reach the mass, so
    the answer is exact and depends on the row alone. Tokens tied in `order` with the last one kept stay.
    """
    num_rows, vocab_size = probs.shape
    cutoffs = torch.empty(num_rows, dtype=order.dtype)  # [S], the order value of the last token kept
    pending = torch.arange(num_rows)
    for width in (*(w for w in _NUCLEUS_WIDTHS if w < vocab_size), vocab_size):
        cand_order, cand_ids = _select(order, pending.tolist()).topk(width, dim=-1)  # [P, W], descending
        cand_probs = _select(probs, pending.tolist()).gather(1, cand_ids).double()  # [P, W]
        cumulative = cand_probs.cumsum(dim=-1)  # [P, W]
        wanted = mass[pending].unsqueeze(1)  # [P, 1]
        # A token stays while the mass before it is still short of the target: the first always stays.
        num_kept = ((cumulative - cand_probs) < wanted).sum(dim=-1, keepdim=True)  # [P, 1]
        settled = (cumulative[:, -1:] >= wanted).squeeze(1) | (width == vocab_size)  # [P]
        cutoffs[pending[settled]] = cand_order.gather(1, num_kept - 1).squeeze(1)[settled]
        pending = pending[~settled]
        if pending.numel() == 0:
            break
    return order < cutoffs.unsqueeze(1)


def _typical_removal(logits: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """[S, V] removal for locally typical sampling: keep the tokens whose surprise is closest to the
    entropy, fewest first, until they hold `mass` of the probability."""
    logprobs = torch.log_softmax(logits, dim=-1)  # [S, V]
    probs = logprobs.exp()
    plogp = torch.where(probs > 0, probs * logprobs, torch.zeros_like(probs))  # [S, V]
    # cumsum adds each row in order; sum() splits a lone row across threads and would round differently
    # than the same row inside a batch, breaking seeded reproducibility.
    entropy = -plogp.cumsum(dim=-1)[:, -1:]  # [S, 1]
    distance = (-logprobs - entropy).abs()  # [S, V]; masked tokens are +inf, so they come last
    return _smallest_set_removal(-distance, probs, mass)
