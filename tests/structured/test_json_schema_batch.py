"""The issue's acceptance test: 100 constrained requests with varied schemas, one batch, all valid."""

from __future__ import annotations

import json

import jsonschema
from structured_cases import chat_prompt, varied_schemas

from ember.engine.llm import LLM
from ember.engine.sampling_params import SamplingParams
from ember.structured import spec_from_response_format


def test_100_varied_schemas_all_validate(llm: LLM) -> None:
    schemas = varied_schemas(100)
    specs = [
        spec_from_response_format({"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": s}})
        for i, s in enumerate(schemas)
    ]
    params = [
        SamplingParams(max_tokens=200, temperature=0.8, seed=i, structured=s) for i, s in enumerate(specs)
    ]
    outputs = llm.generate([chat_prompt("Reply with a JSON value.")] * len(specs), params)
    for schema, output in zip(schemas, outputs, strict=True):
        completion = output.outputs[0]
        assert completion.finish_reason == "stop", completion.text
        jsonschema.validate(json.loads(completion.text), schema)
