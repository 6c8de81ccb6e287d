"""SamplingParams refuses non-finite and out-of-range values, naming the field first (the API layer turns the
message into a 400 naming the parameter)."""

from __future__ import annotations

import math

import pytest

from ember.engine.sampling_params import SamplingParams

FLOAT_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_non_finite_values_are_refused_naming_the_field(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        SamplingParams(**{name: value})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"repetition_penalty": 1e-300}, "repetition_penalty must be between 0.01 and 100"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be between"),
        ({"repetition_penalty": 100.5}, "repetition_penalty must be between"),
        ({"logit_bias": {3: math.nan}}, "logit_bias values must be between -100 and 100"),
        ({"seed": 2**64}, "seed must fit in 64 bits"),
        ({"seed": -(2**63) - 1}, "seed must fit in 64 bits"),
        ({"temperature": 100.01}, "temperature must be between 0 and 100"),
    ],
)
def test_out_of_range_values_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        SamplingParams(**fields)  # type: ignore[arg-type]


def test_the_bounds_themselves_are_accepted() -> None:
    SamplingParams(repetition_penalty=0.01, temperature=100.0, presence_penalty=-2.0, seed=2**64 - 1)
    SamplingParams(repetition_penalty=100.0, frequency_penalty=2.0, logit_bias={1: -100.0}, seed=-(2**63))
