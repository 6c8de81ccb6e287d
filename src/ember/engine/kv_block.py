"""One block of the paged KV cache as the block manager sees it (the tensors live in the model runner)."""

from __future__ import annotations

from dataclasses import dataclass

from ember.engine.prefix_hash import BlockHash


@dataclass(slots=True)
class KVBlock:
    """A fixed-size slab of KV slots: `block_id * block_size + offset` is a token's slot in the cache.

    A block with a hash is in the prefix cache: its KV holds exactly the tokens that hash stands for.
    """

    block_id: int
    ref_count: int = 0  # sequences whose block table holds this block
    block_hash: BlockHash | None = None  # set once the block is full and registered in the prefix cache
