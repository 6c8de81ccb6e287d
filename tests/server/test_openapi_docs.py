"""GET /openapi.json describes the real request bodies (the pydantic models the routes validate with) and the
error envelope; GET /docs is Swagger UI served entirely by this server (no CDN)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import jsonschema
import pytest
from live_server import RunningServer


@pytest.fixture(scope="module")
def document(tiny_server: RunningServer) -> dict[str, Any]:
    response = httpx.get(f"{tiny_server.url}/openapi.json", timeout=60)
    assert response.status_code == 200
    return response.json()


def body_schema(document: dict[str, Any], path: str, media_type: str = "application/json") -> dict[str, Any]:
    body = document["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    name = body["content"][media_type]["schema"]["$ref"].rsplit("/", 1)[-1]
    return document["components"]["schemas"][name]


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/v1/chat/completions", {"messages", "temperature", "tools", "response_format", "logprobs"}),
        ("/v1/completions", {"prompt", "best_of", "echo", "repetition_penalty"}),
        ("/v1/embeddings", {"input", "dimensions", "encoding_format"}),
        ("/v1/tokenize", {"prompt", "messages"}),
        ("/v1/detokenize", {"tokens"}),
        ("/v1/messages", {"messages", "max_tokens", "system", "stop_sequences", "thinking"}),
        ("/v1/messages/count_tokens", {"messages", "system", "tools"}),
        ("/v1/fine_tuning/jobs", {"model", "training_file", "hyperparameters", "method", "seed"}),
        (
            "/v1/accounts/{account}/supervisedFineTuningJobs",
            {"dataset", "baseModel", "loraRank", "batchSize"},
        ),
        ("/v1/accounts/{account}/datasets", {"datasetId", "dataset"}),
        ("/v1/adapters", {"name", "path", "check_base_model"}),
    ],
)
def test_json_request_bodies_are_the_pydantic_models(
    document: dict[str, Any], path: str, fields: set[str]
) -> None:
    schema = body_schema(document, path)
    assert fields <= set(schema["properties"]), sorted(schema["properties"])


def test_uploads_are_multipart_forms_with_a_binary_file(document: dict[str, Any]) -> None:
    for path in ("/v1/files", "/v1/accounts/{account}/datasets/{dataset_id}:upload"):
        schema = body_schema(document, path, "multipart/form-data")
        assert schema["properties"]["file"] == {"format": "binary", "title": "File", "type": "string"}
    assert "purpose" in body_schema(document, "/v1/files", "multipart/form-data")["required"]


def test_sampling_bounds_are_declared(document: dict[str, Any]) -> None:
    properties = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]

    def bounds(name: str) -> dict[str, Any]:
        (number,) = [member for member in properties[name]["anyOf"] if member["type"] != "null"]
        return {k: v for k, v in number.items() if k != "type"}

    assert bounds("repetition_penalty") == {"minimum": 0.01, "maximum": 100.0}
    assert bounds("top_p") == {"exclusiveMinimum": 0.0, "maximum": 1.0}
    assert bounds("presence_penalty") == {"minimum": -2.0, "maximum": 2.0}


def test_errors_are_documented_and_schemas_are_valid(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    assert not any(path.startswith("/inference/v1") for path in document["paths"])  # the same routes again
    for path, operations in document["paths"].items():
        for operation in operations.values():
            errors = operation["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"]
            expected = "AnthropicError" if path.startswith("/v1/messages") else "Error"
            assert errors.endswith(f"/{expected}"), (path, errors)
            assert "422" not in operation["responses"]  # ember answers 400, not FastAPI's 422
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_docs_page_loads_only_from_this_server(tiny_server: RunningServer) -> None:
    page = httpx.get(f"{tiny_server.url}/docs", timeout=60)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    assert "'/openapi.json'" in page.text or '"/openapi.json"' in page.text
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by ember"
        response = httpx.get(f"{tiny_server.url}{asset}", timeout=60)
        assert response.status_code == 200 and len(response.content) > 1000, asset
