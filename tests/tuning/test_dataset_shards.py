"""Files uploaded through signed URLs, on disk: a registration's names and sizes, files received whole or not at
all, a new registration dropping files it no longer names, the join in name order, and the clean-up of
half-written files a killed server left."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ember.tuning.dataset_shards import (
    ShardError,
    ShardStaging,
    parse_shard_plan,
    remove_stale_parts,
)
from ember.tuning.file_storage import ConflictError, NotFoundError
from ember.tuning.multipart_upload import UploadTooLargeError


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def receive(staging: ShardStaging, name: str, *parts: bytes) -> int:
    return asyncio.run(staging.receive("acct", "ds", name, chunks(*parts)))


@pytest.fixture
def staging(tmp_path: Path) -> ShardStaging:
    return ShardStaging(tmp_path / "dataset-uploads", tmp_path / "incoming")


def test_files_arrive_whole_and_join_in_name_order(staging: ShardStaging) -> None:
    staging.register("acct", "ds", parse_shard_plan({"b.jsonl": "4", "a.jsonl": 7}, 100))
    with pytest.raises(ConflictError, match="a.jsonl, b.jsonl"):
        staging.join("acct", "ds")
    assert receive(staging, "b.jsonl", b"{}", b"\n\n") == 4
    with pytest.raises(ShardError, match="registered as 7 bytes but 5 arrived"):
        receive(staging, "a.jsonl", b'{"a":')
    with pytest.raises(UploadTooLargeError):
        receive(staging, "a.jsonl", b'{"a":1}\n')
    with pytest.raises(ShardError, match="not a file registered"):
        receive(staging, "c.jsonl", b"x")
    assert sorted(p.name for p in staging.folder("acct", "ds").iterdir()) == ["b.jsonl", "manifest.json"]
    assert staging.missing("acct", "ds") == ["a.jsonl"]
    receive(staging, "a.jsonl", b'{"a":1}')  # no final line break: the join adds one
    joined = staging.join("acct", "ds")
    assert joined.path.read_bytes() == b'{"a":1}\n{}\n\n' and joined.bytes == 12
    assert joined.filename == "a.jsonl, b.jsonl"
    joined.discard()
    staging.discard("acct", "ds")
    assert not staging.folder("acct", "ds").exists()


def test_registering_again_drops_files_it_no_longer_names(staging: ShardStaging) -> None:
    staging.register("acct", "ds", parse_shard_plan({"old.jsonl": "2"}, 100))
    receive(staging, "old.jsonl", b"{}")
    staging.register("acct", "ds", parse_shard_plan({"new.jsonl": "2"}, 100))
    assert sorted(p.name for p in staging.folder("acct", "ds").iterdir()) == ["manifest.json"]
    with pytest.raises(NotFoundError):
        asyncio.run(staging.receive("acct", "other", "new.jsonl", chunks(b"{}")))


@pytest.mark.parametrize(
    ("files", "param"),
    [
        ({"../up.jsonl": "1"}, "filenameToSize"),
        ({"sub/x.jsonl": "1"}, "filenameToSize"),
        ({"manifest.json": "1"}, "filenameToSize"),
        ({"x.part": "1"}, "filenameToSize"),
        ({"x.jsonl": "0"}, "filenameToSize.x.jsonl"),
        ({"x.jsonl": True}, "filenameToSize.x.jsonl"),
        ({"x.jsonl": "9" * 30}, "filenameToSize.x.jsonl"),
        ({"x.jsonl": "60", "y.jsonl": "60"}, "filenameToSize"),
        ([], "filenameToSize"),
    ],
)
def test_a_bad_registration_names_its_field(files: object, param: str) -> None:
    with pytest.raises(ShardError) as refused:
        parse_shard_plan(files, 100)
    assert refused.value.param == param


def test_stale_partial_files_are_removed_fresh_ones_kept(tmp_path: Path) -> None:
    folder = tmp_path / "model-files" / "acct" / "m"
    folder.mkdir(parents=True)
    stale, fresh, whole = folder / "w.bin.1.part", folder / "w.bin.2.part", folder / "w.bin"
    for path in (stale, fresh, whole):
        path.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    os.utime(whole, (two_hours_ago, two_hours_ago))
    assert remove_stale_parts(tmp_path) == [stale]
    assert fresh.exists() and whole.exists()
