"""`ember bench`'s long-context rows, arrival workload and llama-server peer: the flags, the arrival schedule, the
real-text prompts, the llama-server command and the table. No timing is asserted; the workloads themselves run
against a real `ember serve` in test_http_bench.py."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

import pytest

from ember.bench.arrival_schedule import ArrivalConfig
from ember.bench.arrivals import ArrivalResult
from ember.bench.bench_args import bench_config, context_label
from ember.bench.ember_runs import HttpFigures
from ember.bench.http_workloads import HttpDecodeResult
from ember.bench.llama_server import LlamaServerLaunch, build_flags
from ember.bench.long_context import LongContextResult, prompt_length
from ember.bench.process_memory import ProcessMemory, llama_kv_mib
from ember.bench.report import Row, print_table
from ember.bench.runner import BenchConfig, long_workloads
from ember.bench.server_suite import LongFigures
from ember.bench.table_rows import HttpPeer, long_rows, memory_rows
from ember.bench.text_prompts import TextPrompts, documentation_text
from ember.bench.workloads import TtftResult
from ember.cli import build_parser
from ember.engine.testing import default_tokenizer_and_template
from ember.models.config import ModelConfig


def bench_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *flags])


def test_contexts_are_read_in_k_of_1024_tokens() -> None:
    assert bench_args().contexts == (1024, 4096, 8192)
    assert bench_args("--contexts", "16k,1k,4K").contexts == (1024, 4096, 16384)
    assert bench_args("--contexts", "3000").contexts == (3000,)
    assert bench_args("--contexts", "").contexts == ()
    assert [context_label(c) for c in (1024, 16384, 3000)] == ["1k", "16k", "3000"]


def test_the_kv_cache_dtype_flag_reaches_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_config(bench_args()).kv_cache_dtype == "auto"
    assert bench_config(bench_args("--kv-cache-dtype", "q8_0")).kv_cache_dtype == "q8_0"
    with pytest.raises(SystemExit):
        bench_args("--kv-cache-dtype", "q4_0")
    assert "invalid choice: 'q4_0'" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["4x", "0k", "-1k", "k"])
def test_a_bad_context_is_refused_naming_it(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_args("--contexts", f"1k,{bad}")
    assert f"a context is a token count such as 4096 or 4k, got {bad.lower()!r}" in capsys.readouterr().err


def test_arrival_flags_become_the_arrival_config() -> None:
    flags = ["--arrival-streams", "8", "--arrival-interval-ms", "250", "--arrival-process", "fixed"]
    flags += ["--arrival-seconds", "5", "--arrival-prompt-tokens", "64", "--arrival-new-tokens", "8"]
    cfg = bench_config(bench_args(*flags, "--arrival-seed", "7"))
    assert cfg.arrival == ArrivalConfig(8, 250.0, "fixed", 5.0, 64, 8, 7)
    assert bench_config(bench_args()).arrival == ArrivalConfig()  # 16 running, Poisson every 400 ms
    assert bench_config(bench_args("--no-arrivals")).arrival is None
    with pytest.raises(ValueError, match="arrival running must be at least 1, got 0"):
        bench_config(bench_args("--arrival-streams", "0"))


def test_only_the_long_and_arrival_rows_can_be_asked_for() -> None:
    assert bench_config(bench_args()).short_rows
    assert not bench_config(bench_args("--no-short-rows", "--contexts", "")).short_rows
    with pytest.raises(ValueError, match="--no-short-rows leaves only the HTTP rows"):
        bench_config(bench_args("--no-short-rows", "--no-http"))


def test_the_llama_server_flag_wants_an_executable_and_http(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bench_args("--llama-server", str(tmp_path / "llama-server"))
    assert "no such file (docs/benchmarks.md shows how to build it)" in capsys.readouterr().err
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    with pytest.raises(SystemExit):
        bench_args("--llama-server", str(binary))
    assert "not executable" in capsys.readouterr().err
    binary.chmod(0o755)
    assert bench_config(bench_args("--llama-server", str(binary))).llama_server == str(binary)
    with pytest.raises(ValueError, match="cannot be combined with --no-http"):
        bench_config(bench_args("--llama-server", str(binary), "--no-http"))


def test_poisson_arrivals_are_seeded_and_average_the_interval() -> None:
    cfg = ArrivalConfig(interval_ms=400.0, seconds=2000.0, seed=3)
    offsets = cfg.offsets()
    assert offsets == ArrivalConfig(interval_ms=400.0, seconds=2000.0, seed=3).offsets()
    assert offsets != ArrivalConfig(interval_ms=400.0, seconds=2000.0, seed=4).offsets()
    assert 0 < offsets[0] and offsets == sorted(offsets) and offsets[-1] < 2000.0
    gaps = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
    assert statistics.mean(gaps) == pytest.approx(0.4, rel=0.05)  # ~5000 gaps
    assert statistics.stdev(gaps) == pytest.approx(0.4, rel=0.1)  # exponential: the spread is the mean


def test_fixed_arrivals_come_every_interval_within_the_window() -> None:
    cfg = ArrivalConfig(interval_ms=250.0, process="fixed", seconds=1.0)
    assert cfg.offsets() == [0.25, 0.5, 0.75]


def test_arrival_settings_that_cannot_run_are_refused() -> None:
    with pytest.raises(ValueError, match="arrival process must be one of poisson, fixed, got 'burst'"):
        ArrivalConfig(process="burst")
    with pytest.raises(ValueError, match="no request arrives within 0.2 s at a mean interval of 400.0 ms"):
        ArrivalConfig(process="fixed", seconds=0.2)
    with pytest.raises(ValueError, match="arrival interval_ms must be positive"):
        ArrivalConfig(interval_ms=0)


def test_ttft_percentiles_are_nearest_rank() -> None:
    result = ArrivalResult(16, 5, 100.0, 90.0, [50.0, 10.0, 40.0, 20.0, 30.0])
    assert (result.ttft_percentile_ms(50), result.ttft_percentile_ms(99)) == (30.0, 50.0)
    assert result.ratio == pytest.approx(0.9)


def small_text_prompts(seed: int = 0) -> TextPrompts:
    tokenizer, _ = default_tokenizer_and_template()
    corpus = tokenizer.encode(documentation_text()[:20000])  # the whole text takes seconds to tokenize
    return TextPrompts(tokenizer, seed=seed, corpus=corpus)


def test_text_prompts_are_real_text_of_exact_length_each_new_from_its_start() -> None:
    prompts = small_text_prompts()
    tokenizer = prompts.tokenizer
    made = [prompts.make(length) for length in (300, 300, 1000, 40, 300)]
    assert [len(p) for p in made] == [300, 300, 1000, 40, 300]
    assert len({tuple(p[:16]) for p in made}) == len(made)  # no two share a first cache block
    text = tokenizer.decode(made[2])
    assert text.startswith("Document 3 of the benchmark run.")
    assert len(set(made[2])) > 250  # prose, not one token repeated
    assert sum(text.count(word) for word in (" the ", " is ", " of ")) > 20
    again = prompts.restarted()
    assert [again.make(len(p)) for p in made] == made  # the next server gets the very same ids
    longer = prompts.make(3 * len(prompts.corpus))  # longer than the text: it goes round again
    assert len(longer) == 3 * len(prompts.corpus)


def test_contexts_past_the_model_are_skipped_and_the_rest_sets_max_model_len() -> None:
    cfg = BenchConfig(contexts=(1024, 4096, 16384))
    work, skipped = long_workloads(cfg, limit=8192)
    assert (work.contexts, skipped, work.max_model_len) == ((1024, 4096), [16384], 4096)
    work, skipped = long_workloads(BenchConfig(contexts=()), limit=8192)
    assert (work.contexts, skipped, work.max_model_len) == ((), [], 2048)  # the short rows' 1k prompts
    assert long_workloads(BenchConfig(contexts=(8192,)), limit=4096)[0].max_model_len == 2048


def test_a_long_prompt_leaves_room_for_its_new_tokens() -> None:
    assert prompt_length(8192, 64) == 8127  # with 65 generated tokens the request ends at 8192
    with pytest.raises(ValueError, match="a 64-token context has no room"):
        prompt_length(64, 64)


def test_the_llama_server_command_and_its_build_options(tmp_path: Path) -> None:
    binary = tmp_path / "build" / "bin" / "llama-server"
    launch = LlamaServerLaunch(str(binary), "/models/m.gguf", threads=2, context_tokens=32768, slots=32)
    command = launch.command(port=8123, api_key="-k")
    assert command[0] == str(binary)
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert pairs["--model"] == "/models/m.gguf" and pairs["--port"] == "8123"
    assert (pairs["--threads"], pairs["--threads-batch"]) == ("2", "2")
    assert (pairs["--ctx-size"], pairs["--parallel"]) == ("32768", "32")
    assert "--kv-unified" in command and pairs["--api-key"] == "-k"
    assert "--cache-type-k" not in command  # auto: llama-server's own default (f16), as ember's auto is fp16
    quantized = dataclasses.replace(launch, kv_cache_dtype="q8_0").command(port=8123, api_key="-k")
    pairs = dict(zip(quantized[1::2], quantized[2::2], strict=False))
    assert (pairs["--cache-type-k"], pairs["--cache-type-v"]) == ("q8_0", "q8_0")
    assert build_flags(str(binary)) == "build options unknown (no CMakeCache.txt near the binary)"
    binary.parent.mkdir(parents=True)
    cache = (
        "GGML_AVX:BOOL=ON\nGGML_AVX2:BOOL=ON\nGGML_AVX512:BOOL=OFF\nGGML_NATIVE:BOOL=OFF\nGGML_FMA:BOOL=ON\n"
    )
    (tmp_path / "build" / "CMakeCache.txt").write_text(cache)
    assert build_flags(str(binary)) == "GGML_AVX=ON GGML_AVX2=ON GGML_FMA=ON"


def _long_figures(scale: float) -> LongFigures:
    long_context = {
        c: LongContextResult(c, c - 65, ttft_ms=c * scale, decode_tokens_per_s=100.0 / scale)
        for c in (1024, 4096)
    }
    return LongFigures(
        long_context, ArrivalResult(16, 40, 400.0 / scale, 340.0 / scale, [scale * 100.0] * 40)
    )


def test_http_only_rows_compare_ember_http_with_llama_server(capsys: pytest.CaptureFixture[str]) -> None:
    decode = {1: HttpDecodeResult(1, 90.0, [64], 0.1)}
    peer = HttpPeer("llama-server", HttpFigures(300.0, decode, TtftResult(1700.0, 200.0)), _long_figures(2.0))
    arrival = ArrivalConfig()
    rows = long_rows(_long_figures(1.0), arrival, peer)
    assert [r.metric for r in rows] == [
        "decode tok/s after a 1k context, 1 stream",
        "TTFT 1k context (ms)",
        "decode tok/s after a 4k context, 1 stream",
        "TTFT 4k context (ms)",
        "pure decode tok/s, 16 streams",
        "arrivals: tok/s, 16 running + 1 new / 400 ms (poisson)",
        "arrivals: TTFT p50 (ms)",
        "arrivals: TTFT p99 (ms)",
    ]
    assert rows[5].extra == "85% of pure (target >= 80%); llama-server 85%"
    rows.append(Row("decode tok/s, 1 stream", 200.0, {"llama-server": 90.0}, http=180.0))
    print_table(rows, ["llama-server"], [], http_peers=frozenset({"llama-server"}))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["metric", "ember", "ember", "http", "http/ember", "llama-server"]
    cells = lines[2].split("  ")
    cells = [c.strip() for c in cells if c.strip()]
    # decode after 1k: no engine-only figure, ember http 100 vs llama-server 50: 2x
    assert cells[1:5] == ["-", "100.0", "-", "50.0"] and cells[5] == "2.00x"
    ttft = [c.strip() for c in lines[3].split("  ") if c.strip()]
    assert ttft[2] == "1,024.0" and ttft[4] == "2,048.0" and ttft[5] == "2.00x"  # half the wait: 2x as fast
    last = [c.strip() for c in lines[-1].split("  ") if c.strip()]
    assert last[-1] == "2.00x"  # ember http 180 against llama-server's 90, not the engine's 200


def test_without_a_peer_there_are_only_ember_columns() -> None:
    rows = long_rows(_long_figures(1.0), None, None)
    assert len(rows) == 4 and all(r.peers == {} and r.ember is None for r in rows)


def test_the_rss_rows_put_both_servers_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    """VmRSS after the workloads, then without each one's KV pool; lower is better, so the ratio is theirs
    over ours. No process is read here: test_http_bench.py reads a real server's /proc status."""
    peer = HttpPeer("llama-server", None, _long_figures(1.0), ProcessMemory(1500.0, 1600.0, 384.0))
    rows = memory_rows(ProcessMemory(1200.0, 1900.0, 1536.0), peer)
    assert [r.metric for r in rows] == ["server RSS (MiB)", "server RSS less its KV pool (MiB)"]
    assert rows[0].extra == "VmRSS after the workloads; peak VmHWM ember 1,900, llama-server 1,600"
    assert rows[1].extra == "KV pools ember 1,536, llama-server 384"
    assert (rows[1].http, rows[1].peers) == (1200.0 - 1536.0, {"llama-server": 1500.0 - 384.0})
    print_table(rows[:1], ["llama-server"], [], http_peers=frozenset({"llama-server"}))
    cells = [c.strip() for c in capsys.readouterr().out.splitlines()[2].split("  ") if c.strip()]
    assert cells[1:6] == ["-", "1,200.0", "-", "1,500.0", "1.25x"]  # 1500 / 1200: ember holds less
    assert memory_rows(None, None) == []
    assert [r.peers for r in memory_rows(ProcessMemory(1.0, 2.0, 0.5), None)] == [{}, {}]


def test_llama_servers_kv_pool_is_keys_and_values_of_every_layer_in_its_type() -> None:
    config = ModelConfig(
        architecture="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        max_position_embeddings=32768,
    )
    assert (
        llama_kv_mib(config, 32768) == 384.0
    )  # 24 layers x (K + V) x 2 heads x 64 x 2 bytes = 12 KiB a token
    assert llama_kv_mib(config, 32768, "fp32") == 768.0
    assert llama_kv_mib(config, 32768, "q8_0") == 204.0  # 34 bytes a block of 32 values
