"""Settings of the engine: the KV cache, the scheduler and the engine as a whole, each its own frozen dataclass."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ember.engine.speculation.config import SpeculationConfig
from ember.lora.config import LoraConfig

SCHEDULING_POLICIES = ("fcfs", "priority")
KV_CACHE_DTYPES = ("auto", "fp32", "fp16", "bf16", "q8_0")
"""The values of --kv-cache-dtype (ember.models.kv_cache_format defines each format)."""
BACKGROUND_PRIORITY = 1_000_000
"""The priority of background work (batch lines): SchedulerConfig.background_priority's default."""


@dataclass(frozen=True)
class CacheConfig:
    """How the paged KV cache is cut into blocks and whether full blocks are shared between requests."""

    block_size: int = 16
    """Tokens per KV block: the unit of allocation and of prefix sharing."""

    num_blocks: int = 0
    """Blocks in the cache, counting the reserved null block 0; 0 lets the engine size it from free memory at
    start-up (resolve it with dataclasses.replace before building the scheduler)."""

    enable_prefix_caching: bool = True
    """Reuse the KV of full blocks whose tokens, adapter and cache salt match an earlier request."""

    kv_cache_dtype: str = "auto"
    """How keys and values are stored: fp32, fp16, bf16, or q8_0 (int8 with a scale per head row, as llama.cpp's
    -ctk/-ctv q8_0); auto: fp16 when the native fused decode step serves the model (packed GGUF on an AVX2 + F16C
    CPU), else the model's dtype. A compact dtype fits 2x (fp16, bf16) or ~3.8x (q8_0) the tokens of fp32 in the
    same --kv-cache-gib."""

    def __post_init__(self) -> None:
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"unknown kv_cache_dtype {self.kv_cache_dtype!r}; expected one of {', '.join(KV_CACHE_DTYPES)}"
            )
        if self.block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {self.block_size}")
        if self.num_blocks != 0 and self.num_blocks < 2:
            raise ValueError(
                f"num_blocks must be 0 (size from memory) or at least 2 (block 0 is reserved), got {self.num_blocks}"
            )


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of one engine step and of the waiting queue, and the order in which requests are served."""

    max_num_seqs: int = 64
    """Most requests running at once (each holds KV blocks and one row of every decode batch)."""

    max_num_batched_tokens: int = 512
    """Most tokens run in one step; longer prompts are prefilled in chunks across several steps."""

    max_model_len: int = 2048
    """Most tokens (prompt + output) one request may hold."""

    max_waiting: int = 256
    """Most requests waiting to start; beyond it add_request raises QueueFullError."""

    policy: str = "fcfs"
    """'fcfs': by arrival time; 'priority': lower priority value first, then by arrival time."""

    background_priority: int = BACKGROUND_PRIORITY
    """Requests with a priority at or above this are background work (batch lines), under either policy: they
    start only when no other request waits, at most max_background_seqs run at once, and they are the first
    preempted when a running or waiting request needs room."""

    max_background_seqs: int = 0
    """Most background sequences running at once; 0: half of max_num_seqs (at least 1), so live requests
    arriving always find a free row."""

    background_seqs_beside_live: int = 1
    """While a live request runs or waits, how many background sequences take part in a step (the others keep
    their KV and wait): on a CPU each extra row lengthens the step every live token waits for."""

    background_tokens_beside_live: int = 8
    """...and how many tokens they may run in such a step, so a background prompt's prefill never holds up a
    live decode for long (it is cut into chunks of this size)."""

    @property
    def background_seq_limit(self) -> int:
        return self.max_background_seqs or max(1, self.max_num_seqs // 2)

    def __post_init__(self) -> None:
        for name in ("background_seqs_beside_live", "background_tokens_beside_live"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.max_background_seqs < 0:
            raise ValueError(
                f"max_background_seqs must be 0 (half of max_num_seqs) or more, got {self.max_background_seqs}"
            )
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "max_waiting"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least max_num_seqs "
                f"({self.max_num_seqs}) so every running request can decode in one step"
            )
        if self.policy not in SCHEDULING_POLICIES:
            raise ValueError(
                f"unknown scheduling policy {self.policy!r}; expected one of {SCHEDULING_POLICIES}"
            )


def debug_invariants_from_env() -> bool:
    """EMBER_DEBUG_INVARIANTS=1 (the test suite sets it) turns the engine's idle-time checks on."""
    return os.environ.get("EMBER_DEBUG_INVARIANTS", "") not in ("", "0")


@dataclass(frozen=True)
class EngineConfig:
    """How much KV cache to reserve and how the scheduler batches; each part keeps its own section."""

    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    kv_cache_gib: float = 1.0
    """Memory for the paged KV cache when cache.num_blocks is 0 (decided from this)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    adapt_threads: int = 0
    """When > 0: re-measure the cores other processes leave free while running and move the compute thread count
    between 1 and this many (`ember serve` without --threads: all cores it may use). 0: the count stays as set."""
    fused_decode: bool = True
    """Run decode-only batches through the native fused decode step when the model's weights are on the int8
    kernels (packed GGUF on an AVX2 CPU); False keeps every step on the module-by-module torch path."""
    speculation: SpeculationConfig = field(default_factory=SpeculationConfig)
    """Speculative decoding without a draft model: the request's prediction and n-gram prompt lookup."""
    debug_invariants: bool = field(default_factory=debug_invariants_from_env)
    """Check the KV bookkeeping, and that nothing is left held, every time the engine runs out of work."""
