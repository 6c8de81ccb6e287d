"""Which sampling defaults a served model starts from: vLLM's `--generation-config auto|vllm|FOLDER` and
`--override-generation-config JSON`, plus the embedded default model's own card values.

`auto` takes the checkpoint's (generation_config.json, a GGUF's general.sampling.*); for the embedded
SmolLM2-135M-Instruct, whose GGUF carries none, the values its model card generates with fill the gap (the
neutral temperature 1 makes that 135M model wander off in other languages and rarely end its turn). `vllm`
takes none (temperature 1, no top-p / top-k / penalty: OpenAI's documented defaults). A folder reads the
sampling values of the generation_config.json in it as a checkpoint's are read (ModelLoadError for a bad file,
an out-of-range value logged and left out when the engine builds its defaults). Overrides win over all of them;
a request's own value wins over everything (engine/generation_defaults.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass

from ember.models.checkpoint import GenerationDefaults
from ember.models.hf_loader import read_generation_config

# The GenerationDefaults fields that are sampling parameters of the same name and meaning.
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty")
GENERATION_CONFIG_SOURCES = ("auto", "vllm")


@dataclass(frozen=True)
class GenerationChoice:
    """Where a model's sampling defaults come from, and the values that override them."""

    source: str = "auto"
    """auto (the checkpoint's; the embedded model's card values), vllm (none), or a folder with a
    generation_config.json."""
    overrides: tuple[tuple[str, float], ...] = ()
    """(field, value) pairs over SAMPLING_FIELDS, applied last."""

    def __post_init__(self) -> None:
        if self.source not in GENERATION_CONFIG_SOURCES and not os.path.isfile(
            os.path.join(self.source, "generation_config.json")
        ):
            raise ValueError(
                f"generation config must be auto, vllm or a folder holding generation_config.json, "
                f"got {self.source!r}"
            )
        for name, value in self.overrides:
            _check_value(name, value)


def parse_overrides(text: str) -> tuple[tuple[str, float], ...]:
    """`--override-generation-config`'s JSON object, e.g. '{"temperature": 0.7}'; ValueError naming what is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"override generation config is not JSON: {error.msg}") from None
    if not isinstance(raw, dict):
        raise ValueError("override generation config must be a JSON object of sampling values")
    pairs = tuple((str(name), value) for name, value in raw.items())
    for name, value in pairs:
        _check_value(name, value)
    return pairs


def resolve_generation(
    checkpoint: GenerationDefaults, choice: GenerationChoice, card: GenerationDefaults | None
) -> GenerationDefaults:
    """The defaults the model serves with: the chosen source, then the overrides. `card` is the model card's
    sampling for a checkpoint that ships none (the embedded default model), used by auto only."""
    sampling: dict[str, float | int | None] = dict.fromkeys(SAMPLING_FIELDS)
    if choice.source == "auto":
        for name in SAMPLING_FIELDS:
            value = getattr(checkpoint, name)
            if value is None and card is not None:
                value = getattr(card, name)
            sampling[name] = value
    elif choice.source != "vllm":
        folder = read_generation_config(choice.source)
        sampling.update({name: getattr(folder, name) for name in SAMPLING_FIELDS})
    for name, value in choice.overrides:
        sampling[name] = int(value) if name == "top_k" else float(value)
    return dataclasses.replace(checkpoint, **sampling)


def _check_value(name: str, value: object) -> None:
    if name not in SAMPLING_FIELDS:
        raise ValueError(
            f"generation config field {name!r} is not one ember applies as a default; "
            f"use {', '.join(SAMPLING_FIELDS)}"
        )
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"generation config {name} must be a finite number, got {value!r}")
