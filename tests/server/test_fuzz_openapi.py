"""Schemathesis against a live server: requests generated from /openapi.json, valid and invalid, for every
operation. Asserts what #12 promises a careless or hostile client: no 5xx (nor an error event of type
server_error inside a 200 stream), a 4xx always in the error envelope, and the server alive afterwards.

In the suite each operation gets a few derandomized examples per mode (a regression gate of ~300 requests:
2.5 minutes on a loaded 2-core box, server start included); `make fuzz` sets EMBER_FUZZ_EXAMPLES for a long,
random run."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import requests
import schemathesis
from fine_tuning_server import TINY_MODEL, TuningServer, start_tuning_server, wait_for, write_tiny_model
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode

EXAMPLES_ENV = "EMBER_FUZZ_EXAMPLES"  # examples per operation and mode; set: a long random run
SUITE_EXAMPLES = 6
MAX_MODEL_LEN = 128  # keeps every generated completion short
IDLE = {"status": "ok", "num_running": 0, "num_waiting": 0}

pytestmark = pytest.mark.timeout(3600)


@dataclass(frozen=True)
class Finding:
    operation: str
    mode: str
    status: int
    problem: str
    curl: str

    def __str__(self) -> str:
        return f"{self.operation} ({self.mode}) -> {self.status}: {self.problem}\n    {self.curl[:600]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TuningServer]:
    model_dir = write_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama")
    running = start_tuning_server(model_dir, tmp_path_factory.mktemp("data"), max_model_len=MAX_MODEL_LEN)
    yield running
    running.stop()


def envelope_problem(path: str, body: object) -> str | None:
    """What is wrong with a 4xx body, or None when it is the envelope of its API."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return f"no error object: {str(body)[:300]}"
    error = body["error"]
    if path.startswith("/v1/messages"):  # Anthropic's shape
        if body.get("type") != "error" or not isinstance(error.get("message"), str):
            return f"not Anthropic's error shape: {body}"
        return None
    # Extra fields are allowed (a rejected upload adds `validation`, the list of its problems).
    if not {"message", "type", "param", "code"} <= set(error) or not error["message"]:
        return f"not OpenAI's error envelope: {body}"
    return None


def stream_problem(text: str) -> str | None:
    """A server-side failure reported inside a 200 event stream."""
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        try:
            event = json.loads(line[5:])
        except ValueError:
            continue
        error = event.get("error") if isinstance(event, dict) else None
        if isinstance(error, dict) and error.get("type") in ("server_error", "api_error"):
            return f"error event in the stream: {line[:300]}"
    return None


def problem_of(case: Case, response: schemathesis.Response) -> str | None:
    path = case.operation.path
    if response.status_code >= 500:
        return f"server error: {response.text[:300]}"
    if response.status_code >= 400:
        try:
            return envelope_problem(path, response.json())
        except ValueError:
            return f"a {response.status_code} whose body is not JSON: {response.text[:300]}"
    content_type = response.headers.get("content-type", [""])[0]  # schemathesis keeps every value of a header
    if content_type.startswith("text/event-stream"):
        return stream_problem(response.text)
    return None


def fuzz_operation(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    base_url: str,
    examples: int,
    derandomize: bool,
    statuses: Counter[int],
) -> list[Finding]:
    findings: list[Finding] = []
    session = requests.Session()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        phases=[Phase.explicit, Phase.generate],  # record, do not shrink: a finding is reported as generated
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case) -> None:
        if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body:
            # A generated name is a 404 before anything else runs: most valid requests should reach the model.
            case.body["model"] = TINY_MODEL if case.body["model"] is not None else None
        response = case.call(base_url=base_url, session=session, timeout=120)
        statuses[response.status_code] += 1
        problem = problem_of(case, response)
        if problem is not None:
            findings.append(
                Finding(operation.label, mode.value, response.status_code, problem, case.as_curl_command())
            )

    try:
        run()
    except Unsatisfiable:
        pass  # e.g. no invalid request exists for an operation without parameters
    finally:
        session.close()
    return findings


def test_generated_requests_get_no_5xx_and_always_the_envelope(server: TuningServer) -> None:
    examples = int(os.environ.get(EXAMPLES_ENV, SUITE_EXAMPLES))
    derandomize = EXAMPLES_ENV not in os.environ
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    # The replay commands must carry every value: the sanitizer hides fields such as stop_token_ids ("token").
    schema.config.output.sanitization.enabled = False
    findings: list[Finding] = []
    statuses: Counter[int] = Counter()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            findings += fuzz_operation(operation, mode, server.url, examples, derandomize, statuses)
    print(
        f"{operations} operations, {statuses.total()} requests; by status: {dict(sorted(statuses.items()))}"
    )
    assert operations >= 30  # every route is in the schema (a broken schema would fuzz nothing)
    assert not findings, f"{len(findings)} findings:\n" + "\n".join(str(f) for f in findings[:40])
    # Alive, and nothing left running or half-received once the last response is in.
    wait_for(lambda: httpx.get(f"{server.url}/health", timeout=60).json() == IDLE, what="an idle /health")
    incoming = server.data_dir / "incoming"
    assert not incoming.exists() or not any(incoming.iterdir()), list(incoming.iterdir())
