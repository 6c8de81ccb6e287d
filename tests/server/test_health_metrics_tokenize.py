"""GET /health, GET /metrics (Prometheus text, vLLM names) and the tokenize/detokenize routes."""

from __future__ import annotations

import re

import httpx
from live_server import TINY_MODEL, RunningServer

SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[^}]*)\})? (?P<value>[-+0-9.eE]+|\+Inf|NaN)$"
)


def parse_prometheus(text: str) -> dict[str, float]:
    """name{labels} -> value; fails on any line that is not valid Prometheus text exposition."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples[f"{match['name']}{{{match['labels'] or ''}}}"] = float(match["value"])
    return samples


def test_health(tiny_server: RunningServer) -> None:
    response = httpx.get(f"{tiny_server.url}/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_metrics_count_requests_and_tokens(tiny_server: RunningServer) -> None:
    def scrape() -> dict[str, float]:
        response = httpx.get(f"{tiny_server.url}/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        return parse_prometheus(response.text)

    label = 'model_name="accounts/fireworks/models/tiny-llama"'
    before = scrape()
    body = {"model": TINY_MODEL, "prompt": "count me", "max_tokens": 4, "ignore_eos": True}
    assert httpx.post(f"{tiny_server.url}/v1/completions", json=body, timeout=60).status_code == 200
    after = scrape()
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert f"{gauge}{{{label}}}" in after
    assert (
        after[f"vllm:generation_tokens_total{{{label}}}"] - before[f"vllm:generation_tokens_total{{{label}}}"]
        == 4
    )
    assert after[f"vllm:prompt_tokens_total{{{label}}}"] > before[f"vllm:prompt_tokens_total{{{label}}}"]
    for histogram in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"):
        key = f"{histogram}_count{{{label}}}"
        assert after[key] == before.get(key, 0) + 1
        assert after[f'{histogram}_bucket{{{label},le="+Inf"}}'] == after[key]
    itl = f"vllm:inter_token_latency_seconds_count{{{label}}}"
    assert after[itl] - before.get(itl, 0) == 3  # four tokens, three gaps
    length = f'vllm:request_success_total{{{label},finished_reason="length"}}'
    assert after[length] == before.get(length, 0) + 1


def test_tokenize_and_detokenize_round_trip(tiny_server: RunningServer) -> None:
    base = f"{tiny_server.url}/inference/v1"
    tokens = httpx.post(f"{base}/tokenize", json={"model": TINY_MODEL, "prompt": "Hello, world!"}).json()
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 256
    assert httpx.post(f"{base}/detokenize", json={"tokens": tokens["tokens"]}).json() == {
        "prompt": "Hello, world!"
    }
    chat = httpx.post(f"{base}/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    text = httpx.post(f"{base}/detokenize", json={"tokens": chat["tokens"]}).json()["prompt"]
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert httpx.post(f"{base}/tokenize", json={"prompt": "x", "messages": []}).status_code == 400
