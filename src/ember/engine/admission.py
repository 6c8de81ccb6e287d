"""What a request must satisfy before the engine registers any of it: token ids inside the vocabulary (its
prompt, its logit_bias keys). Checked first in add_request, so a refusal is the caller's ValueError (an HTTP
400) and leaves nothing behind; the sampler would otherwise meet a bad id only at the request's first step."""

from __future__ import annotations

from ember.engine.sampling_params import SamplingParams


def check_token_ids(prompt_token_ids: list[int], params: SamplingParams, vocab_size: int) -> None:
    if any(t < 0 or t >= vocab_size for t in prompt_token_ids):
        raise ValueError(f"prompt token ids must be in [0, {vocab_size})")
    outside = [t for t in params.logit_bias if t < 0 or t >= vocab_size]
    if outside:
        raise ValueError(f"logit_bias token id {outside[0]} is outside the vocabulary [0, {vocab_size})")
