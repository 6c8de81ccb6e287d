"""The benchmark's "through HTTP" column: a real `ember serve` child process on a tiny random model, driven by
the same workloads as the engine-only rows, at tiny sizes."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

from ember.bench.arrival_schedule import ArrivalConfig
from ember.bench.ember_runs import Workloads, measure_ember
from ember.bench.http_server import HttpBenchError, ServerLaunch, running_server
from ember.bench.http_workloads import HttpBench
from ember.bench.process_memory import read_process_memory
from ember.bench.report import Row, print_table
from ember.bench.server_suite import LongWorkloads, measure_long_and_arrivals
from ember.bench.table_rows import memory_rows
from ember.bench.text_prompts import TextPrompts, documentation_text
from ember.bench.workloads import PromptMaker
from ember.cli import build_parser
from ember.engine.engine_config import CacheConfig, SchedulerConfig
from ember.engine.llm_engine import EngineConfig, LLMEngine
from ember.engine.testing import default_tokenizer_and_template, tiny_loaded_model, write_tiny_hf_folder

VOCAB_SIZE = 49152  # the tiny models keep the default model's tokenizer

ENGINE = EngineConfig(
    cache=CacheConfig(block_size=16),
    scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=128, max_model_len=512),
    kv_cache_gib=0.02,
)


def tiny_launch(model: Path, quantization: str | None = None) -> ServerLaunch:
    return ServerLaunch.matching(ENGINE, str(model), "auto", quantization, threads=1)


def test_the_server_command_carries_the_engine_settings() -> None:
    command = tiny_launch(Path("/models/tiny"), quantization="q8_0").command(port=8123, api_key="k")
    assert command[1:4] == ["-m", "ember.cli", "serve"]
    args = build_parser().parse_args(command[3:])
    assert (args.host, args.port, args.api_key, args.model) == ("127.0.0.1", 8123, ["k"], ["/models/tiny"])
    assert (args.max_num_seqs, args.max_num_batched_tokens, args.max_model_len) == (4, 128, 512)
    assert (args.block_size, args.kv_cache_gib, args.threads, args.no_prefix_caching) == (16, 0.02, 1, False)
    assert args.no_fine_tuning and args.quantization == "q8_0" and args.kv_cache_dtype == "auto"


def test_each_workload_runs_on_the_engine_then_through_a_real_server(tmp_path: Path) -> None:
    model = write_tiny_hf_folder(tmp_path / "tiny", max_position_embeddings=512)
    engine = LLMEngine(tiny_loaded_model(), ENGINE)
    work = Workloads(streams=(1, 3), new_tokens=5, prefill_length=64, ttft_length=64)
    tokenizer, _ = default_tokenizer_and_template()
    text = TextPrompts(tokenizer, corpus=tokenizer.encode(documentation_text()[:10000]))
    # 3 arrivals (at 0.1, 0.2, 0.3 s) beside 2 running streams, between two 0.35 s windows of those 2 alone
    arrival = ArrivalConfig(
        running=2, interval_ms=100, process="fixed", seconds=0.35, prompt_tokens=16, new_tokens=3
    )
    long_work = LongWorkloads(contexts=(96, 160), new_tokens=4, arrival=arrival, max_model_len=512)
    with running_server(tiny_launch(model)) as server:
        http = HttpBench(server.url, server.api_key, VOCAB_SIZE)
        figures = measure_ember(engine, PromptMaker(VOCAB_SIZE), work, http)
        hits_before = prefix_cache_hits(server.url)
        long = measure_long_and_arrivals(http, text, long_work, "ember")
        hits_after = prefix_cache_hits(server.url)
        memory = read_process_memory(server.process.pid, kv_pool_mib=20.0)
        http.close()
        intruder = HttpBench(server.url, "not-the-key", VOCAB_SIZE)
        with pytest.raises(HttpBenchError, match="answered 401"):
            intruder.prefill_tokens_per_s(8, 1)
        intruder.close()
    assert server.process.poll() is not None  # the server is gone
    assert read_process_memory(server.process.pid, 0.0) is None
    # the server's own figures, not this process's: it loaded a model and a KV pool, so it holds more than none
    assert memory is not None and 20.0 < memory.rss_mib <= memory.peak_mib < math.inf
    (rss_row, rest_row) = memory_rows(memory, None)
    assert (rss_row.http, rest_row.http) == (memory.rss_mib, memory.rss_mib - 20.0)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/health", timeout=2.0)

    assert figures.http is not None
    assert sorted(figures.decode) == sorted(figures.http.decode) == [1, 3]
    for streams, decode in figures.http.decode.items():
        assert decode.new_tokens_per_stream == [5] * streams
        assert 0 < decode.tokens_per_s < math.inf
        assert 0 <= decode.client_cpu_share < math.inf
        assert 0 < figures.decode[streams].tokens_per_s < math.inf
    http_rates = [figures.http.prefill_tokens_per_s, figures.http.ttft.cold_ms, figures.http.ttft.cached_ms]
    assert all(0 < r < math.inf for r in http_rates)

    assert hits_before > 0 and hits_after == hits_before  # the real-text prompts never hit the prefix cache
    assert [(r.context, r.prompt_tokens) for r in long.long_context.values()] == [(96, 91), (160, 155)]
    for result in long.long_context.values():
        assert 0 < result.ttft_ms < math.inf and 0 < result.decode_tokens_per_s < math.inf
    assert long.arrival is not None
    assert (long.arrival.running, long.arrival.arrivals, len(long.arrival.ttft_ms)) == (2, 3, 3)
    assert 0 < long.arrival.pure_tokens_per_s < math.inf and 0 < long.arrival.tokens_per_s < math.inf
    assert all(0 < ttft < math.inf for ttft in long.arrival.ttft_ms)


def prefix_cache_hits(url: str) -> float:
    """vLLM's prefix-cache hit counter from the server's /metrics."""
    for line in httpx.get(f"{url}/metrics", timeout=10.0).text.splitlines():
        if line.startswith("vllm:prefix_cache_hits_total"):
            return float(line.split()[-1])
    raise AssertionError("/metrics has no vllm:prefix_cache_hits_total")


def test_a_server_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    with pytest.raises(HttpBenchError, match="exited with code") as error:
        with running_server(tiny_launch(missing)):
            pass
    assert f"no such file or folder: {missing}" in str(error.value)


def test_the_table_shows_http_next_to_the_engine_as_a_speed_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        Row("decode tok/s, 8 streams", 200.0, http=180.0),
        Row("TTFT 1k prompt, cold (ms)", 100.0, lower_is_better=True, http=125.0),
        Row("prefill 512 tok/s", 600.0),
    ]
    print_table(rows, [], [], ("how the HTTP column is measured",))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["metric", "ember", "ember", "http", "http/ember", "notes"]
    assert lines[2].split()[-2:] == ["180.0", "0.90x"]
    assert lines[3].split()[-2:] == ["125.0", "0.80x"]  # slower is below 1 for latencies too
    assert lines[4].split()[-2:] == ["-", "-"]
    assert lines[-1] == "note: how the HTTP column is measured"


def test_bench_runs_through_http_unless_told_not_to() -> None:
    assert build_parser().parse_args(["bench"]).http is True
    assert build_parser().parse_args(["bench", "--no-http"]).http is False


def test_a_key_that_starts_with_a_dash_reaches_the_server() -> None:
    """secrets.token_urlsafe starts one key in 32 with "-": it failed a CI run as `--api-key: expected one
    argument` before the command passed it as --api-key=KEY."""
    command = tiny_launch(Path("/models/tiny")).command(port=8123, api_key="-dash_key")
    assert build_parser().parse_args(command[3:]).api_key == ["-dash_key"]
