"""The engine's bookkeeping checked as a whole: the block manager's own rules always, and when the engine is
idle, that nothing is left held (a KV block, a sequence or embedding input, runner state or an adapter pin no
request owns)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ember.engine.llm_engine import LLMEngine


def check_engine_invariants(engine: LLMEngine) -> None:
    """RuntimeError naming what is broken or left behind."""
    block_manager = engine.scheduler.block_manager
    block_manager.check_invariants()
    if engine.has_unfinished():
        return
    leaks = []
    if block_manager.num_free_blocks != block_manager.num_usable_blocks:
        leaks.append(f"{block_manager.num_usable_blocks - block_manager.num_free_blocks} KV blocks")
    if engine.scheduler.has_unfinished() or engine.sequences or engine.embeddings.num_sequences:
        leaks.append("sequences in the scheduler or the engine")
    if engine.runner.num_sequences:
        leaks.append(f"runner state of {engine.runner.num_sequences} sequences")
    pinned = [info.name for info in engine.lora_manager.list_adapters() if info.active_requests]
    if pinned:
        leaks.append(f"pins on adapters {pinned}")
    if leaks:
        raise RuntimeError(f"the engine is idle but still holds {', '.join(leaks)}")
