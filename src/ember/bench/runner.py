"""Runs every workload on ember and on the installed peers, then prints one table with ratios."""

from __future__ import annotations

import resource
from contextlib import ExitStack
from dataclasses import dataclass

from ember import kernels
from ember.bench.arrival_schedule import ArrivalConfig
from ember.bench.bench_args import SPECULATION_MODES, context_label
from ember.bench.ember_runs import HttpFigures, Workloads, measure_ember, measure_http_only
from ember.bench.http_server import ServerLaunch, running_server
from ember.bench.http_workloads import HttpBench
from ember.bench.llama_server import LLAMA_KV_TYPES, LlamaServerLaunch, build_flags
from ember.bench.machine import capture_load_log, cpu_description, ember_kernel_paths, lscpu_fields
from ember.bench.peers import PeerResult, llama_cpp_peer, transformers_peer
from ember.bench.process_memory import ProcessMemory, llama_kv_mib, read_process_memory
from ember.bench.report import print_table
from ember.bench.server_suite import LongFigures, LongWorkloads, measure_long_and_arrivals
from ember.bench.speculation import measure_speculation, print_speculation_table
from ember.bench.table_rows import HttpPeer, long_rows, memory_rows, short_rows
from ember.bench.text_prompts import TextPrompts
from ember.bench.workloads import PromptMaker
from ember.engine.engine_config import CacheConfig, SchedulerConfig
from ember.engine.llm_engine import EngineConfig, LLMEngine
from ember.models.kv_cache import kv_bytes_per_block
from ember.models.loader import LoadConfig, LoadedModel, load_model
from ember.threads import configure_torch_threads

SHORT_MAX_MODEL_LEN = 2048  # what the short workloads need (a 1k prompt plus its question)


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
    contexts: tuple[int, ...] = (1024, 4096, 8192)  # long-context rows (through HTTP): tokens at their end
    arrival: ArrivalConfig | None = ArrivalConfig()  # None: no arrival rows
    llama_server: str | None = None  # a llama-server binary: the same HTTP workloads on it, same GGUF
    # the short rows (prefill, decode per stream count, TTFT); off: only the long-context and arrival rows
    short_rows: bool = True
    kv_cache_dtype: str = "auto"  # ember's --kv-cache-dtype; llama-server gets the same type (-ctk/-ctv)
    speculation: str = "off"  # the speculation table: off, also (after the others) or only
    speculation_repeats: int = 3

    def __post_init__(self) -> None:
        if self.new_tokens < 1:
            raise ValueError(f"new_tokens must be at least 1, got {self.new_tokens}")
        if not self.short_rows and not self.http:
            raise ValueError(
                "--no-short-rows leaves only the HTTP rows: it cannot be combined with --no-http"
            )
        if self.speculation not in SPECULATION_MODES:
            raise ValueError(f"speculation must be one of {SPECULATION_MODES}, got {self.speculation!r}")
        if self.speculation_repeats < 1:
            raise ValueError(f"speculation_repeats must be at least 1, got {self.speculation_repeats}")
        if self.llama_server is not None and not self.http:
            raise ValueError("--llama-server is compared through HTTP: it cannot be combined with --no-http")


def _http_footnote(http: HttpFigures) -> str:
    cpu = ", ".join(
        f"{d.client_cpu_share:.0%} ({s} stream{'s' if s > 1 else ''})" for s, d in http.decode.items()
    )
    return (
        "ember http: the same prompts through `ember serve` on loopback (OpenAI /v1/completions, streamed for "
        "decode and TTFT), each run right after its engine-only twin; http/ember is its speed relative to the "
        f"engine alone. The client's CPU per wall second while decoding: {cpu}; it runs on the same cores."
    )


def _most_streams(cfg: BenchConfig) -> int:
    """Sequences in flight at once: the most decode streams, or the arrival run's streams and its arrivals."""
    return max((*cfg.streams, (cfg.arrival.running + 16) if cfg.arrival else 0))


def long_workloads(cfg: BenchConfig, limit: int) -> tuple[LongWorkloads, list[int]]:
    """The long rows that fit the model's context of `limit` tokens (the others are named as skipped), and the
    servers' max_model_len for them."""
    fitting = tuple(c for c in cfg.contexts if c <= limit)
    skipped = [c for c in cfg.contexts if c > limit]
    max_model_len = min(limit, max((SHORT_MAX_MODEL_LEN, *fitting)))
    return LongWorkloads(fitting, cfg.new_tokens, cfg.arrival, max_model_len), skipped


def _llama_server_peer(
    binary: str,
    cfg: BenchConfig,
    loaded: LoadedModel,
    work: Workloads,
    long: LongWorkloads,
    prompts: TextPrompts,
) -> HttpPeer:
    streams = _most_streams(cfg)
    # One KV pool for everything in flight: the longest context, or 1024 tokens per slot (the arrival run's
    # streams stay under that at a few hundred tok/s over its three windows), whichever is more.
    context = max(long.max_model_len, streams * 1024)
    launch = LlamaServerLaunch(
        binary, loaded.source_path, cfg.threads, context, streams, kv_cache_dtype=cfg.kv_cache_dtype
    )
    print(f"starting llama-server on loopback: {' '.join(launch.command(0, 'KEY')[1:])}", flush=True)
    with running_server(launch) as server:
        http = HttpBench(server.url, server.api_key, loaded.config.vocab_size)
        try:
            figures = measure_http_only(http, work) if cfg.short_rows else None
            long_figures = measure_long_and_arrivals(http, prompts, long, "llama-server")
            memory = read_process_memory(
                server.process.pid, llama_kv_mib(loaded.config, context, cfg.kv_cache_dtype)
            )
        finally:
            http.close()
    return HttpPeer("llama-server", figures, long_figures, memory)


def _kv_pool_mib(engine: LLMEngine) -> float:
    """The KV pool of the engine, and of `ember serve` started with the same settings."""
    per_block = kv_bytes_per_block(engine.model.config, engine.config.cache.block_size, engine.kv_format)
    return engine.num_blocks * per_block / 2**20


def run_benchmark(cfg: BenchConfig) -> None:
    configure_torch_threads(cfg.threads)
    with capture_load_log() as load_log:
        loaded = load_model(LoadConfig(cfg.model, cfg.weight_format, quantization=cfg.quantization))
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cfg.speculation == "only":
        _run_speculation(cfg, loaded)
        return
    print(
        f"model {loaded.name} ({loaded.source_format} {loaded.file_quantization}) as {loaded.weight_format}, "
        f"{cfg.threads} threads, loaded in {loaded.load_seconds:.2f} s, peak RSS {rss_mib:.0f} MiB, "
        f"int8 kernels {kernels.chosen_isa() if loaded.kernel_linears else 'not used'}",
        flush=True,
    )
    long, skipped = long_workloads(cfg, loaded.config.max_position_embeddings)
    engine_cfg = EngineConfig(
        cache=CacheConfig(block_size=16, kv_cache_dtype=cfg.kv_cache_dtype),
        scheduler=SchedulerConfig(
            max_num_seqs=_most_streams(cfg),
            max_num_batched_tokens=512,
            max_model_len=long.max_model_len,
        ),
        kv_cache_gib=1.5,
    )
    engine = LLMEngine(loaded, engine_cfg)
    prompts = PromptMaker(loaded.config.vocab_size)
    work = Workloads(cfg.streams, cfg.new_tokens)
    text_prompts = TextPrompts(loaded.tokenizer)
    ours_long = LongFigures({}, None)
    ours_memory: ProcessMemory | None = None
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
        ember = measure_ember(engine, prompts, work, http) if cfg.short_rows else None
        if http is not None:
            ours_long = measure_long_and_arrivals(http, text_prompts.restarted(), long, "ember")
            ours_memory = read_process_memory(server.process.pid, _kv_pool_mib(engine))
    steps = (engine.stats.num_fused_steps, engine.stats.num_module_steps, engine.stats.num_split_steps)
    kv_note = f"KV cache: ember {engine.kv_format.name} (--kv-cache-dtype {cfg.kv_cache_dtype})"
    if cfg.llama_server is not None:
        kv_note += f", llama-server {LLAMA_KV_TYPES[cfg.kv_cache_dtype]}"
        kv_note += " (its default)" if cfg.kv_cache_dtype == "auto" else ""
    http_peer = None
    if cfg.llama_server is not None:
        http_peer = _llama_server_peer(cfg.llama_server, cfg, loaded, work, long, text_prompts.restarted())
    peers: list[PeerResult] = []
    gguf = loaded.source_path if loaded.source_format == "gguf" else None
    if gguf and "llama.cpp" in cfg.peers and ember is not None:
        peers.append(llama_cpp_peer(gguf, prompts, cfg.threads, cfg.new_tokens))
    if gguf and "transformers" in cfg.peers and ember is not None:
        del engine
        peers.append(transformers_peer(gguf, prompts, list(cfg.streams), cfg.new_tokens))
    rows = [] if ember is None else short_rows(ember, peers, http_peer)
    rows += long_rows(ours_long, cfg.arrival, http_peer)
    rows += memory_rows(ours_memory, http_peer)
    names = [p.name for p in peers] + ([http_peer.name] if http_peer else [])
    footnotes = [
        f"CPU: {cpu_description(lscpu_fields())}",
        f"ember kernels: {ember_kernel_paths(kernels.chosen_isa(), *steps)}",
        kv_note,
        f"ember weights: {load_log.summary(loaded.kernel_linears, loaded.weight_format)}",
        "ratios ember/peer are speeds: above 1 ember is faster (for latencies, peer ms / ember ms); a peer "
        "measured through HTTP is compared with ember http",
    ]
    if cfg.llama_server is not None:
        footnotes.append(f"llama-server: {cfg.llama_server}, built with {build_flags(cfg.llama_server)}")
    if skipped:
        listed = ", ".join(context_label(c) for c in skipped)
        footnotes.append(
            f"contexts {listed} skipped: longer than the model's {loaded.config.max_position_embeddings}"
        )
    if ember is not None and ember.http:
        footnotes.append(_http_footnote(ember.http))
    print_table(rows, names, [p for p in peers if p.note], tuple(footnotes), frozenset(names[len(peers) :]))
    if cfg.speculation == "also":
        _run_speculation(cfg, loaded)


def _run_speculation(cfg: BenchConfig, loaded: LoadedModel) -> None:
    print("running the speculation workloads (off / on alternating)", flush=True)
    rows = measure_speculation(loaded, cfg.speculation_repeats)
    print_speculation_table(rows, loaded, cfg.threads, cfg.speculation_repeats)
