"""Which KV blocks each sequence holds, with prefix caching over full blocks.

Block 0 is reserved as the null block: it is never handed out, so padding entries of block tables and
slot mappings (which point at 0) can never overwrite a sequence's KV.

Handing out order: a new block is the lowest-numbered block of the free list (blocks that hold no cached
prefix). Only when that list is empty is a cached block evicted, least recently freed first. A sequence frees
its blocks tail first, so its deepest blocks are evicted before the prefix it may share with others.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass

from ember.engine.kv_block import KVBlock
from ember.engine.prefix_hash import BlockHash, cache_namespace, hash_block
from ember.engine.sequence import Sequence


@dataclass
class PrefixCacheStats:
    """Prompt tokens looked up in the prefix cache and how many of them were found, since start-up."""

    queries: int = 0
    hits: int = 0


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be at least 2 (block 0 is reserved), got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [KVBlock(block_id) for block_id in range(num_blocks)]
        self._free: list[int] = list(range(1, num_blocks))  # min-heap of uncached unreferenced blocks
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; oldest free first
        self._cached: dict[BlockHash, int] = {}  # hash -> the one block holding that prefix
        self._tables: dict[str, list[int]] = {}
        self._num_registered: dict[str, int] = {}  # per sequence: leading full blocks offered to the cache
        self._stats = PrefixCacheStats()

    # ---- queries ----------------------------------------------------------------------------------------

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation may take: never-used or uncached ones plus evictable cached ones."""
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks held by sequences (evictable cached blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(self._stats.queries, self._stats.hits)

    def block_ids(self, sequence_id: str) -> list[int]:
        """The sequence's block table (a copy); empty when it holds no blocks."""
        return list(self._tables.get(sequence_id, ()))

    def ref_count(self, block_id: int) -> int:
        return self._blocks[block_id].ref_count

    def is_cached(self, block_id: int) -> bool:
        return self._blocks[block_id].block_hash is not None

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def uses_prefix_cache(self, sequence: Sequence) -> bool:
        """Prompt-logprob and pooling (embedding) sequences need the network's output at every prompt position,
        so they never take cached KV."""
        return self.enable_prefix_caching and not sequence.wants_prompt_logprobs and not sequence.pooling

    def populates_prefix_cache(self, sequence: Sequence) -> bool:
        """Embedding inputs do not offer their blocks either: bulk documents embedded once would evict the
        chat prefixes that are reused, and their blocks go straight back to the free list when they finish."""
        return self.enable_prefix_caching and not sequence.pooling

    # ---- allocation -------------------------------------------------------------------------------------

    def get_computed_blocks(self, sequence: Sequence) -> tuple[list[int], int]:
        """The longest cached prefix of the sequence's tokens, in full blocks, and its length in tokens.

        Never the whole sequence: at least one token is left to compute so there are logits to sample from.
        Changes nothing but the sequence's own block hashes; pass the blocks to allocate_slots in the same step
        to take them.
        """
        if not self.uses_prefix_cache(sequence):
            return [], 0
        hits: list[int] = []
        for index in range((sequence.num_tokens - 1) // self.block_size):
            block_id = self._cached.get(self._block_hash(sequence, index))
            if block_id is None:
                break
            hits.append(block_id)
        return hits, len(hits) * self.block_size

    def allocate_slots(
        self,
        sequence: Sequence,
        num_new_tokens: int,
        computed_blocks: list[int] | None = None,
        num_lookahead_tokens: int = 0,
    ) -> bool:
        """Grow the sequence's table to hold its computed tokens, `computed_blocks` and `num_new_tokens` more.

        Returns False, changing nothing, when there are not enough free blocks. Blocks that become full with
        the new tokens enter the prefix cache now: their KV is written by the step these tokens run in.
        `num_lookahead_tokens` more slots are held for draft tokens (speculative decoding), which are not the
        sequence's tokens: no block is registered for them, and trim() gives back what verification rejects.
        """
        computed = computed_blocks or []
        table = self._tables.get(sequence.sequence_id)
        if num_new_tokens < 1:
            raise ValueError(f"num_new_tokens must be at least 1, got {num_new_tokens}")
        if computed and (table or sequence.num_computed_tokens):
            raise ValueError(
                f"sequence {sequence.sequence_id!r}: computed blocks are only taken by a sequence holding none"
            )
        if any(self._blocks[block_id].block_hash is None for block_id in computed):
            raise ValueError(
                f"sequence {sequence.sequence_id!r}: a computed block is no longer in the prefix cache"
            )
        total = sequence.num_computed_tokens + len(computed) * self.block_size + num_new_tokens
        if total > sequence.num_tokens:
            raise ValueError(
                f"sequence {sequence.sequence_id!r}: cannot schedule up to token {total}, it has {sequence.num_tokens}"
            )
        num_held = len(table or ()) + len(computed)
        num_needed = max(0, self.num_blocks_for(total + num_lookahead_tokens) - num_held)
        num_revived = sum(1 for block_id in computed if self._blocks[block_id].ref_count == 0)
        if num_needed > self.num_free_blocks - num_revived:
            return False

        if table is None:
            table = self._tables[sequence.sequence_id] = []
            self._num_registered[sequence.sequence_id] = len(computed)  # cached already
            if self.uses_prefix_cache(sequence):
                self._stats.queries += sequence.num_tokens
                self._stats.hits += len(computed) * self.block_size
        for block_id in computed:
            block = self._blocks[block_id]
            if block.ref_count == 0:
                del self._evictable[block_id]
            block.ref_count += 1
            table.append(block_id)
        for _ in range(num_needed):
            table.append(self._take_free_block())
        if self.populates_prefix_cache(sequence):
            self._register_full_blocks(sequence, table, total // self.block_size)
        return True

    def free(self, sequence: Sequence, keep_cached: bool = True) -> None:
        """Drop the sequence's references, tail first. A full cached block within `sequence.num_computed_tokens`
        stays cached (evictable); the rest return to the free list. That uncaches blocks registered by an
        allocation whose step never ran (a sequence preempted in the step that scheduled it); keep_cached=False
        uncaches them all (after a failed step their KV may be garbage)."""
        table = self._tables.pop(sequence.sequence_id, None) or []
        self._num_registered.pop(sequence.sequence_id, None)
        num_written = sequence.num_computed_tokens // self.block_size if keep_cached else 0
        for index in reversed(range(len(table))):
            block = self._blocks[table[index]]
            block.ref_count -= 1
            if block.ref_count > 0:
                continue
            if block.block_hash is not None and index < num_written:
                self._evictable[block.block_id] = None
                continue
            if block.block_hash is not None:
                del self._cached[block.block_hash]
                block.block_hash = None
            heapq.heappush(self._free, block.block_id)

    def trim(self, sequence: Sequence) -> None:
        """Give back the blocks past the sequence's computed tokens: those held only for draft tokens that
        verification rejected. They were never registered in the prefix cache, so they go to the free list."""
        table = self._tables.get(sequence.sequence_id)
        if table is None:
            return
        keep = self.num_blocks_for(sequence.num_computed_tokens)
        while len(table) > keep:
            block = self._blocks[table.pop()]  # private: only full blocks of computed tokens are shared
            block.ref_count -= 1
            heapq.heappush(self._free, block.block_id)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix; blocks in use stay with their sequences but will not be shared."""
        for block_id in self._evictable:
            heapq.heappush(self._free, block_id)
        self._evictable.clear()
        self._cached.clear()
        for block in self._blocks:
            block.block_hash = None

    def check_invariants(self) -> None:
        """Raise RuntimeError naming the first broken bookkeeping rule (for tests and debug runs)."""
        holders = [0] * self.num_blocks
        for sequence_id, table in self._tables.items():
            if len(set(table)) != len(table):
                raise RuntimeError(f"sequence {sequence_id!r} holds a block twice: {table}")
            for block_id in table:
                holders[block_id] += 1
        free, evictable = set(self._free), set(self._evictable)
        if len(free) != len(self._free) or free & evictable or 0 in free | evictable or holders[0]:
            raise RuntimeError(
                "free list and evictable set must be disjoint, duplicate-free, without block 0"
            )
        for block in self._blocks[1:]:
            if block.ref_count != holders[block.block_id] or block.ref_count < 0:
                raise RuntimeError(
                    f"block {block.block_id}: ref count {block.ref_count} but {holders[block.block_id]} holders"
                )
            is_free = block.block_id in free or block.block_id in evictable
            if is_free == (block.ref_count > 0):
                raise RuntimeError(f"block {block.block_id}: ref count {block.ref_count} but free={is_free}")
            if (block.block_id in evictable) != (block.ref_count == 0 and block.block_hash is not None):
                raise RuntimeError(f"block {block.block_id}: evictable exactly when cached and unreferenced")
            if block.block_hash is not None and self._cached.get(block.block_hash) != block.block_id:
                raise RuntimeError(f"block {block.block_id}: its hash does not map back to it")
        if len(self._cached) != sum(block.block_hash is not None for block in self._blocks):
            raise RuntimeError("the prefix cache maps a hash to a block that does not carry it")

    # ---- internals --------------------------------------------------------------------------------------

    def _take_free_block(self) -> int:
        if self._free:
            block = self._blocks[heapq.heappop(self._free)]
        else:
            block_id, _ = self._evictable.popitem(last=False)
            block = self._blocks[block_id]
            del self._cached[block.block_hash]  # type: ignore[arg-type]  # evictable blocks are cached
            block.block_hash = None
        block.ref_count = 1
        return block.block_id

    def _block_hash(self, sequence: Sequence, index: int) -> BlockHash:
        """The hash of the sequence's full block `index`, from its kept hashes, extending them as needed."""
        hashes = sequence.block_hashes
        if index < len(hashes):
            return hashes[index]
        tokens = sequence.all_token_ids
        size = self.block_size
        namespace = cache_namespace(sequence.lora_key, sequence.cache_salt)
        for missing in range(len(hashes), index + 1):
            parent = hashes[-1] if hashes else None
            hashes.append(hash_block(parent, tokens[missing * size : (missing + 1) * size], namespace))
        return hashes[index]

    def _register_full_blocks(self, sequence: Sequence, table: list[int], num_full: int) -> None:
        first = self._num_registered[sequence.sequence_id]
        if first >= num_full:
            return
        for index in range(first, num_full):
            block_hash = self._block_hash(sequence, index)
            block = self._blocks[table[index]]
            # Another block may already hold this prefix (computed in the same step, or skipped by a prompt-
            # logprob sequence): keep that one; this block stays private and is freed, not cached.
            if block_hash not in self._cached and block.block_hash is None:
                block.block_hash = block_hash
                self._cached[block_hash] = block.block_id
        self._num_registered[sequence.sequence_id] = num_full
