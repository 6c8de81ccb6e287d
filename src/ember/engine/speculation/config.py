"""How speculative decoding runs: the server's settings (SpeculationConfig) and a request's own (SpeculationParams),
resolved into the DraftSettings one sequence drafts with."""

from __future__ import annotations

from dataclasses import dataclass

PROMPT_LOOKUP_MODES = ("off", "on", "auto")


def _check_lookup(mode: str | None, num_tokens: int | None, min_n: int | None, max_n: int | None) -> None:
    if mode is not None and mode not in PROMPT_LOOKUP_MODES:
        raise ValueError(f"prompt_lookup mode must be one of {PROMPT_LOOKUP_MODES}, got {mode!r}")
    if num_tokens is not None and not 1 <= num_tokens <= 16:
        raise ValueError(f"num_speculative_tokens must be between 1 and 16, got {num_tokens}")
    for name, value in (("prompt_lookup_min", min_n), ("prompt_lookup_max", max_n)):
        if value is not None and not 1 <= value <= 16:
            raise ValueError(f"{name} must be between 1 and 16, got {value}")
    if min_n is not None and max_n is not None and min_n > max_n:
        raise ValueError(f"prompt_lookup_min ({min_n}) must not exceed prompt_lookup_max ({max_n})")


@dataclass(frozen=True)
class SpeculationConfig:
    """The server's speculative decoding (`ember serve --speculation-*`)."""

    prompt_lookup: str = "off"
    """n-gram lookup over the prompt and the output: 'off', 'on' (draft whenever the last n tokens occurred
    before, always num_speculative_tokens) or 'auto' (like 'on', but a sequence whose drafts keep failing pauses,
    and the draft length follows what was kept). Off by default, as vLLM's n-gram method is opt-in: on text that
    repeats nothing 'auto' still costs 1-2% (`ember bench --speculation`'s story row); a request may turn it on,
    and a request's `prediction` drafts whatever this says."""

    num_speculative_tokens: int = 15
    """Most tokens drafted for one sequence per step (k; the verification runs k + 1 tokens). 15 fills the
    fused step's 16 rows a sequence; drafts are shorter unless the last ones were kept (drafter.py)."""

    prompt_lookup_min: int = 3
    """Shortest suffix of the output looked up in the prompt and output (n-gram size); 2-grams of prose
    ("of the") match everywhere and mostly draft the wrong continuation."""

    prompt_lookup_max: int = 4
    """Longest suffix looked up; longer matches are tried first."""

    max_batch: int = 4
    """No drafting in a step with more decoding sequences than this: a batch that wide already fills the
    cores, so verifying drafts would only cost compute (and the fused one-token decode step)."""

    def __post_init__(self) -> None:
        _check_lookup(
            self.prompt_lookup, self.num_speculative_tokens, self.prompt_lookup_min, self.prompt_lookup_max
        )
        if self.max_batch < 0:
            raise ValueError(f"max_batch must be non-negative, got {self.max_batch}")


@dataclass(frozen=True)
class SpeculationParams:
    """A request's own speculation: its predicted output (OpenAI / Fireworks `prediction`) and overrides of
    the server's n-gram lookup; None keeps the server's value."""

    prediction_token_ids: tuple[int, ...] = ()
    prompt_lookup: str | None = None
    num_speculative_tokens: int | None = None
    prompt_lookup_min: int | None = None
    prompt_lookup_max: int | None = None

    def __post_init__(self) -> None:
        _check_lookup(
            self.prompt_lookup, self.num_speculative_tokens, self.prompt_lookup_min, self.prompt_lookup_max
        )


@dataclass(frozen=True)
class DraftSettings:
    """What one sequence drafts with: the server's config with the request's overrides applied."""

    prediction_token_ids: tuple[int, ...]
    prompt_lookup: str
    num_speculative_tokens: int
    min_n: int
    max_n: int

    @staticmethod
    def resolve(config: SpeculationConfig, params: SpeculationParams | None) -> DraftSettings:
        p = params or SpeculationParams()
        min_n = p.prompt_lookup_min if p.prompt_lookup_min is not None else config.prompt_lookup_min
        max_n = p.prompt_lookup_max if p.prompt_lookup_max is not None else config.prompt_lookup_max
        if min_n > max_n:  # one side from the request, the other from the server: the request's side wins
            if p.prompt_lookup_min is not None:
                max_n = min_n
            else:
                min_n = max_n
        return DraftSettings(
            prediction_token_ids=tuple(p.prediction_token_ids),
            prompt_lookup=p.prompt_lookup or config.prompt_lookup,
            num_speculative_tokens=p.num_speculative_tokens or config.num_speculative_tokens,
            min_n=min_n,
            max_n=max_n,
        )

    @property
    def drafts(self) -> bool:
        return bool(self.prediction_token_ids) or self.prompt_lookup != "off"
