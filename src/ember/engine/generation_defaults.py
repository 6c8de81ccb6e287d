"""The checkpoint's sampling defaults (generation_config.json, or a GGUF's general.sampling.* keys) as the base
of every request that leaves a value out, as vLLM does with its default generation_config="auto": a request's
own value always wins, then the checkpoint's, then ember's neutral default (SamplingParams())."""

from __future__ import annotations

import dataclasses
import logging

from ember.engine.sampling_params import SamplingParams
from ember.models.checkpoint import GenerationDefaults
from ember.models.generation_choice import SAMPLING_FIELDS

logger = logging.getLogger(__name__)


def default_sampling_params(generation: GenerationDefaults) -> SamplingParams:
    """SamplingParams() with every valid sampling value the checkpoint sets; an invalid one (top_p 0, say) is
    logged and left out rather than refusing to serve the model."""
    overrides: dict[str, float | int] = {}
    for name in SAMPLING_FIELDS:
        value = getattr(generation, name)
        if value is None:
            continue
        try:
            SamplingParams(**{name: value})
        except ValueError as error:
            logger.warning("ignoring the checkpoint's default %s=%r: %s", name, value, error)
            continue
        overrides[name] = value
    params = dataclasses.replace(SamplingParams(), **overrides)
    if overrides:
        shown = ", ".join(f"{name}={value}" for name, value in overrides.items())
        logger.info("sampling defaults of requests that leave them out: %s", shown)
    return params
