"""Request fields shared by completions and chat completions (OpenAI names, Fireworks and vLLM extras)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ember.server.common.errors import invalid_request

# Every optional field accepts null; unknown fields are ignored, as OpenAI-compatible servers do.
NonNegativeInt = Annotated[int, Field(ge=0)]
SeedInt = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]


class APIModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class StreamOptions(APIModel):
    include_usage: bool | None = None


class SamplingRequest(APIModel):
    """The sampler, stopping and Fireworks fields common to /completions and /chat/completions."""

    model: str | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    min_tokens: NonNegativeInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: SeedInt | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[NonNegativeInt] | None = None
    ignore_eos: bool | None = None
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    context_length_exceeded_behavior: Literal["truncate", "error"] | None = None
    perf_metrics_in_response: bool | None = None
    prompt_cache_isolation_key: str | None = None
    skip_special_tokens: bool | None = None
    # {"type": "text" | "json_object" | "json_schema" | "grammar" | "regex" | "choice", ...}: checked by
    # ember.structured.spec_from_response_format, so it stays an untyped object here.
    response_format: Any = None

    @field_validator("stop")
    @classmethod
    def _stop_strings_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def logit_bias_by_id(self, vocab_size: int) -> dict[int, float]:
        biases: dict[int, float] = {}
        for key, bias in (self.logit_bias or {}).items():
            try:
                token_id = int(key)
            except ValueError:
                raise invalid_request(
                    f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
                ) from None
            if not 0 <= token_id < vocab_size:
                raise invalid_request(
                    f"logit_bias token id {token_id} is outside the vocabulary [0, {vocab_size})",
                    param="logit_bias",
                )
            biases[token_id] = bias
        return biases


def refuse_unsupported(request: BaseModel, fields: tuple[str, ...]) -> None:
    """Fields this server does not implement yet are refused, never silently ignored."""
    for name in fields:
        value = getattr(request, name, None)
        if value is not None and value != [] and value is not False:
            raise invalid_request(
                f"{name} is not supported yet by this server", param=name, code="unsupported_parameter"
            )
