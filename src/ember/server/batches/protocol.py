"""The bodies of POST /v1/batches and Fireworks' POST /v1/accounts/{a}/batchInferenceJobs, and how a Fireworks
job's inferenceParameters become the defaults of each request's body."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ember.server.batches.input_file import BATCH_URLS
from ember.server.common.errors import invalid_request
from ember.server.common.protocol import APIModel

MAX_METADATA_PAIRS = 16  # OpenAI's metadata: 16 pairs, keys up to 64 characters, values up to 512


class BatchCreate(APIModel):
    """POST /v1/batches."""

    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] = Field(
        description=f"where every request of the file goes: one of {', '.join(BATCH_URLS)}"
    )
    completion_window: Literal["24h"]
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    output_expires_after: dict[str, Any] | None = Field(default=None, description="not supported (a 400)")

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            if len(value) > MAX_METADATA_PAIRS:
                raise ValueError(f"at most {MAX_METADATA_PAIRS} key-value pairs")
            long_key = next((key for key in value if len(key) > 64), None)
            if long_key is not None:
                raise ValueError(f"key {long_key[:70]!r} is over 64 characters")
        return value


class InferenceParameters(APIModel):
    maxTokens: Annotated[int, Field(ge=1)] | None = None  # noqa: N815 - Fireworks' names
    temperature: float | None = None
    topP: float | None = None  # noqa: N815
    topK: int | None = None  # noqa: N815
    n: Annotated[int, Field(ge=1)] | None = None
    extraBody: str | None = Field(  # noqa: N815
        default=None,
        description='more body fields as a JSON object in a string, e.g. "{\\"stop\\": [\\"\\\\n\\"]}"',
    )


class FireworksJobCreate(APIModel):
    """POST /v1/accounts/{account}/batchInferenceJobs (query: batchInferenceJobId)."""

    model: str | None = None  # required unless continuedFromJobName is given
    inputDatasetId: str | None = None  # noqa: N815
    outputDatasetId: str | None = None  # noqa: N815
    displayName: str | None = None  # noqa: N815
    inferenceParameters: InferenceParameters | None = None  # noqa: N815
    precision: str | None = None
    continuedFromJobName: str | None = None  # noqa: N815


def job_body_defaults(parameters: InferenceParameters | None) -> dict[str, Any]:
    """The chat completion fields a job's inferenceParameters set for every row (a row's own body wins)."""
    if parameters is None:
        return {}
    defaults: dict[str, Any] = {}
    if parameters.extraBody:
        try:
            extra = json.loads(parameters.extraBody)
        except ValueError as error:
            raise invalid_request(
                f"inferenceParameters.extraBody is not JSON: {error}", param="inferenceParameters.extraBody"
            ) from None
        if not isinstance(extra, dict):
            raise invalid_request(
                "inferenceParameters.extraBody must be a JSON object", param="inferenceParameters.extraBody"
            )
        defaults.update(extra)
    named = {
        "max_tokens": parameters.maxTokens,
        "temperature": parameters.temperature,
        "top_p": parameters.topP,
        "top_k": parameters.topK,
        "n": parameters.n,
    }
    defaults.update({key: value for key, value in named.items() if value is not None})
    return defaults


def check_fireworks_job(body: FireworksJobCreate) -> None:
    """What this server refuses of a Fireworks job, each a 400 naming its field."""
    if body.precision not in (None, "", "PRECISION_UNSPECIFIED"):
        raise invalid_request(
            f"precision {body.precision!r} is not available: this server runs the model at the precision it "
            "was loaded with; leave precision out",
            param="precision",
            code="unsupported_parameter",
        )
