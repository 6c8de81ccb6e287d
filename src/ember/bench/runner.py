"""Runs every workload on ember and on the installed peers, then prints one table with ratios."""

from __future__ import annotations

import resource
from contextlib import ExitStack
from dataclasses import dataclass

from ember import kernels
from ember.bench.ember_runs import HttpFigures, Workloads, measure_ember
from ember.bench.http_server import ServerLaunch, running_server
from ember.bench.http_workloads import HttpBench
from ember.bench.peers import PeerResult, llama_cpp_peer, transformers_peer
from ember.bench.report import Row, print_table
from ember.bench.workloads import PromptMaker
from ember.engine.engine_config import CacheConfig, SchedulerConfig
from ember.engine.llm_engine import EngineConfig, LLMEngine
from ember.models.loader import LoadConfig, load_model
from ember.threads import configure_torch_threads


@dataclass(frozen=True)
class BenchConfig:
    model: str | None = None
    weight_format: str = "auto"
    quantization: str | None = None  # q8_0 / q4_0 / q4_k: quantize a safetensors checkpoint at load
    threads: int = 2
    streams: tuple[int, ...] = (1, 8, 32)
    new_tokens: int = 64
    peers: tuple[str, ...] = ("transformers", "llama.cpp")
    http: bool = True  # run every workload again through `ember serve` and show the HTTP/engine ratio


def _http_footnote(http: HttpFigures) -> str:
    cpu = ", ".join(
        f"{d.client_cpu_share:.0%} ({s} stream{'s' if s > 1 else ''})" for s, d in http.decode.items()
    )
    return (
        "ember http: the same prompts through `ember serve` on loopback (OpenAI /v1/completions, streamed for "
        "decode and TTFT), each run right after its engine-only twin; http/ember is its speed relative to the "
        f"engine alone. The client's CPU per wall second while decoding: {cpu}; it runs on the same cores."
    )


def run_benchmark(cfg: BenchConfig) -> list[Row]:
    configure_torch_threads(cfg.threads)
    loaded = load_model(LoadConfig(cfg.model, cfg.weight_format, quantization=cfg.quantization))
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"model {loaded.name} ({loaded.source_format} {loaded.file_quantization}) as {loaded.weight_format}, "
        f"{cfg.threads} threads, loaded in {loaded.load_seconds:.2f} s, peak RSS {rss_mib:.0f} MiB, "
        f"int8 kernels {kernels.chosen_isa() if loaded.kernel_linears else 'not used'}",
        flush=True,
    )
    engine_cfg = EngineConfig(
        cache=CacheConfig(block_size=16),
        scheduler=SchedulerConfig(
            max_num_seqs=max(cfg.streams), max_num_batched_tokens=512, max_model_len=2048
        ),
        kv_cache_gib=1.0,
    )
    engine = LLMEngine(loaded, engine_cfg)
    prompts = PromptMaker(loaded.config.vocab_size)
    with ExitStack() as stack:
        http = None
        if cfg.http:
            launch = ServerLaunch.matching(
                engine_cfg, cfg.model, cfg.weight_format, cfg.quantization, cfg.threads
            )
            print("starting `ember serve` on loopback for the HTTP column", flush=True)
            server = stack.enter_context(running_server(launch))
            http = HttpBench(server.url, server.api_key, loaded.config.vocab_size)
            stack.callback(http.close)
        ember = measure_ember(engine, prompts, Workloads(cfg.streams, cfg.new_tokens), http)
    rows: list[Row] = []
    prefill, ttft = ember.prefill_tokens_per_s, ember.ttft
    decode, gemm = ember.decode, ember.gemm_only_tokens_per_s
    peers: list[PeerResult] = []
    gguf = loaded.source_path if loaded.source_format == "gguf" else None
    if gguf and "llama.cpp" in cfg.peers:
        peers.append(llama_cpp_peer(gguf, prompts, cfg.threads, cfg.new_tokens))
    if gguf and "transformers" in cfg.peers:
        del engine
        peers.append(transformers_peer(gguf, prompts, list(cfg.streams), cfg.new_tokens))
    rows.append(
        Row(
            "prefill 512 tok/s",
            prefill,
            {p.name: p.prefill_tokens_per_s for p in peers},
            http=ember.http.prefill_tokens_per_s if ember.http else None,
        )
    )
    for s in cfg.streams:
        d = decode[s]
        rows.append(
            Row(
                f"decode tok/s, {s} stream{'s' if s > 1 else ''}",
                d.tokens_per_s,
                {p.name: p.decode_tokens_per_s.get(s) for p in peers},
                extra=f"GEMM-only {gemm[s]:.0f} ({d.tokens_per_s / gemm[s]:.0%}); step {d.step_ms:.1f} ms, "
                f"outside forward {d.overhead_ms:.2f} ms",
                http=ember.http.decode[s].tokens_per_s if ember.http else None,
            )
        )
    rows.append(
        Row(
            "TTFT 1k prompt, cold (ms)",
            ttft.cold_ms,
            {},
            lower_is_better=True,
            http=ember.http.ttft.cold_ms if ember.http else None,
        )
    )
    rows.append(
        Row(
            "TTFT 1k prompt, prefix cached (ms)",
            ttft.cached_ms,
            {},
            lower_is_better=True,
            extra=f"{ttft.cached_ms / ttft.cold_ms:.1%} of cold",
            http=ember.http.ttft.cached_ms if ember.http else None,
        )
    )
    footnotes = (_http_footnote(ember.http),) if ember.http else ()
    print_table(rows, [p.name for p in peers], [p for p in peers if p.note], footnotes)
    return rows
