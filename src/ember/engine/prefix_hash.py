"""Content hashes of full KV blocks, chained so a block's hash stands for its whole prefix.

sha256 rather than Python's hash(): a 64-bit collision would hand one tenant another tenant's KV, and the
digest is the same in every process.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Sequence

BlockHash = bytes  # 32-byte sha256 digest

_ROOT_PARENT = bytes(32)


def cache_namespace(lora_key: str | None, cache_salt: str | None) -> bytes:
    """The part of every block hash that keeps adapters and tenants apart (None and "" stay distinct)."""
    return hashlib.sha256(json.dumps([lora_key, cache_salt]).encode()).digest()


def hash_block(parent: BlockHash | None, token_ids: Sequence[int], namespace: bytes) -> BlockHash:
    """hash(parent, tokens, namespace); parent is None for the first block of a sequence."""
    digest = hashlib.sha256(parent if parent is not None else _ROOT_PARENT)
    digest.update(namespace)  # fixed 32 bytes, so the token bytes that follow cannot be confused with it
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()
