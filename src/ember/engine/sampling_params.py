"""Per-request generation parameters, validated once when the request enters the engine."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ember.engine.speculation.config import SpeculationParams
    from ember.structured.spec import StructuredSpec

# The bounds of the sampling values: OpenAI's where it defines one (penalties, logit_bias, top_logprobs), vLLM's
# otherwise. The API's request fields declare the same bounds, so /openapi.json shows them.
MAX_TEMPERATURE = 100.0
MAX_ABS_PENALTY = 2.0  # presence_penalty and frequency_penalty
MAX_ABS_LOGIT_BIAS = 100.0
MAX_LOGPROBS = 20
# vLLM only asks for > 0, but 1e-300 divides a logit into +inf and the sampler then sees NaN. Between these
# bounds every penalized logit stays finite even at the smallest sampled temperature.
MIN_REPETITION_PENALTY = 0.01
MAX_REPETITION_PENALTY = 100.0
_FLOAT_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)


@dataclass
class SamplingParams:
    """How one request samples and when it stops. Pure data: the engine and the API layer share it.

    Semantics follow OpenAI where it defines a parameter and Fireworks/vLLM otherwise:
    temperature 0 is greedy; repetition_penalty divides positive logits (multiplies negative ones) of every
    token seen in prompt + output; presence/frequency penalties subtract over output tokens only.
    """

    n: int = 1
    best_of: int | None = None  # sample best_of, return the n with the highest cumulative logprob
    max_tokens: int | None = 16  # None: up to the remaining context
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = (
        False  # vLLM: a matched stop string or stop token's text stays in the text
    )
    logprobs: int | None = None  # None: no logprobs; k >= 0: sampled token's logprob plus top-k alternatives
    prompt_logprobs: int | None = None  # same, for every prompt token (echo + logprobs)
    skip_special_tokens: bool = True
    structured: StructuredSpec | None = None  # output constrained to a JSON schema / grammar (token masks)
    speculation: SpeculationParams | None = None  # predicted output and n-gram lookup overrides (drafts only)

    def __post_init__(self) -> None:
        if self.top_k == -1:
            self.top_k = 0
        for name in _FLOAT_FIELDS:
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        checks: list[tuple[bool, str]] = [
            (self.n >= 1, "n must be at least 1"),
            (self.best_of is None or self.best_of >= self.n, "best_of must be at least n"),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be at least 1"),
            (self.min_tokens >= 0, "min_tokens must be non-negative"),
            (
                self.max_tokens is None or self.min_tokens <= self.max_tokens,
                "min_tokens must not exceed max_tokens",
            ),
            (
                0.0 <= self.temperature <= MAX_TEMPERATURE,
                f"temperature must be between 0 and {MAX_TEMPERATURE:g}",
            ),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be -1, 0 or positive"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (0.0 < self.typical_p <= 1.0, "typical_p must be in (0, 1]"),
            (
                MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY,
                f"repetition_penalty must be between {MIN_REPETITION_PENALTY:g} and {MAX_REPETITION_PENALTY:g}",
            ),
            (
                abs(self.presence_penalty) <= MAX_ABS_PENALTY,
                f"presence_penalty must be between -{MAX_ABS_PENALTY:g} and {MAX_ABS_PENALTY:g}",
            ),
            (
                abs(self.frequency_penalty) <= MAX_ABS_PENALTY,
                f"frequency_penalty must be between -{MAX_ABS_PENALTY:g} and {MAX_ABS_PENALTY:g}",
            ),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
                f"logprobs must be between 0 and {MAX_LOGPROBS}",
            ),
            (
                self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= MAX_LOGPROBS,
                f"prompt_logprobs must be between 0 and {MAX_LOGPROBS}",
            ),
            (
                all(abs(b) <= MAX_ABS_LOGIT_BIAS for b in self.logit_bias.values()),
                f"logit_bias values must be between -{MAX_ABS_LOGIT_BIAS:g} and {MAX_ABS_LOGIT_BIAS:g}",
            ),
            (
                self.seed is None or -(2**63) <= self.seed < 2**64,
                "seed must fit in 64 bits",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def num_samples(self) -> int:
        """How many sequences the engine generates for this request."""
        return self.best_of if self.best_of is not None else self.n
