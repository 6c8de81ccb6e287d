"""Files uploaded through signed URLs: the files a client registers (name -> size) before it PUTs each one to
its signed URL, one folder per resource. A Fireworks dataset's files wait apart until `:validateUpload` joins
them into one upload for FileStorage; an uploaded model's files stay where they land (its PEFT folder).

Layout of one resource's folder (datasets: `<data dir>/dataset-uploads/<account>/<dataset id>`):
    manifest.json          {"files": {name: size}}, rewritten on each registration
    <name>                 a file received in full, with its registered size
    <name>.<random>.part   a file being received

Registering again replaces the manifest (Fireworks' endpoint overwrites the registered files) and drops files
it no longer names. A file is written to a `.part` file and renamed only once its exact size arrived, so a file
either is complete or is absent.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

from ember.tuning.file_storage import ConflictError, NotFoundError
from ember.tuning.multipart_upload import ReceivedUpload, UploadTooLargeError, incoming_upload_path

_SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
STAGING_FOLDERS = ("dataset-uploads", "model-files")  # under the data directory: datasets', uploaded models'

MANIFEST = "manifest.json"
MAX_SHARDS = 100


class ShardError(ValueError):
    """A registration or shard the client got wrong (HTTP 400); `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ShardPlan:
    """The files registered for one dataset, in upload order (by name, as the SDK's helper sorts them)."""

    sizes: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())


def parse_shard_plan(filename_to_size: object, max_total_bytes: int) -> ShardPlan:
    """`filenameToSize` of a getUploadEndpoint body: plain file names to sizes (int64 as strings or numbers)."""
    if not isinstance(filename_to_size, dict) or not filename_to_size:
        raise ShardError("filenameToSize must be a non-empty object of file names to sizes", "filenameToSize")
    if len(filename_to_size) > MAX_SHARDS:
        raise ShardError(f"at most {MAX_SHARDS} files can be registered at once", "filenameToSize")
    sizes: dict[str, int] = {}
    for name, raw in filename_to_size.items():
        if not _SHARD_NAME.fullmatch(name) or name.endswith(".part") or name == MANIFEST:
            raise ShardError(
                f"file name {name!r} must be 1-128 letters, digits, '_', '.' or '-' (no folders)",
                "filenameToSize",
            )
        size = _size(raw)
        if size is None or size < 1:
            raise ShardError(
                f"the size of {name!r} must be a positive integer, got {raw!r}", f"filenameToSize.{name}"
            )
        sizes[name] = size
    plan = ShardPlan(dict(sorted(sizes.items())))
    if plan.total_bytes > max_total_bytes:
        raise ShardError(
            f"the files add up to {plan.total_bytes} bytes, over the upload limit of {max_total_bytes} bytes",
            "filenameToSize",
        )
    return plan


def _size(raw: object) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.isdigit() and len(raw) < 19:
        return int(raw)
    return None


class ShardStaging:
    """Files uploaded through signed URLs, one folder per resource: `<root>/<account>/<resource id>` (datasets:
    `<data dir>/dataset-uploads`; uploaded models keep their files where they land)."""

    def __init__(self, root: Path, incoming_dir: Path) -> None:
        self.root = Path(root)
        self.incoming_dir = Path(incoming_dir)

    def folder(self, account: str, dataset_id: str) -> Path:
        return self.root / account / dataset_id

    def register(self, account: str, dataset_id: str, plan: ShardPlan) -> None:
        folder = self.folder(account, dataset_id)
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f"{MANIFEST}.{secrets.token_hex(4)}.tmp"
        temporary.write_text(json.dumps({"files": plan.sizes}))
        os.replace(temporary, folder / MANIFEST)
        for path in folder.iterdir():  # shards of an earlier registration that this one does not name
            if path.name != MANIFEST and path.name not in plan.sizes and not path.name.endswith(".part"):
                path.unlink(missing_ok=True)

    def plan(self, account: str, dataset_id: str) -> ShardPlan | None:
        try:
            data = json.loads((self.folder(account, dataset_id) / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return ShardPlan({str(k): int(v) for k, v in data["files"].items()})

    async def receive(self, account: str, dataset_id: str, name: str, body: AsyncIterable[bytes]) -> int:
        """Write one registered shard from a request body; its size must be exactly the registered one."""
        plan = self.plan(account, dataset_id)
        if plan is None:
            raise NotFoundError(f"no upload was started for {dataset_id!r}; call getUploadEndpoint")
        expected = plan.sizes.get(name)
        if expected is None:
            raise ShardError(f"{name!r} is not a file registered for this upload", "filename")
        folder = self.folder(account, dataset_id)
        partial = folder / f"{name}.{secrets.token_hex(6)}.part"
        received = 0
        try:
            with open(partial, "wb") as out:
                async for chunk in body:
                    received += len(chunk)
                    if received > expected:
                        raise UploadTooLargeError(expected, f"{name!r} (registered as {expected} bytes)")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if received != expected:
                raise ShardError(
                    f"{name!r} was registered as {expected} bytes but {received} arrived", "Content-Length"
                )
            if self.plan(account, dataset_id) != plan:
                raise ConflictError(f"the upload of {dataset_id!r} was registered again meanwhile")
            os.replace(partial, folder / name)
        finally:
            partial.unlink(missing_ok=True)
        return received

    def missing(self, account: str, dataset_id: str) -> list[str] | None:
        """The registered files not (completely) uploaded yet; None when nothing was registered."""
        plan = self.plan(account, dataset_id)
        if plan is None:
            return None
        folder = self.folder(account, dataset_id)
        return [name for name, size in plan.sizes.items() if _size_of(folder / name) != size]

    def join(self, account: str, dataset_id: str) -> ReceivedUpload:
        """All registered shards, complete, joined in name order into one file in `incoming/` (a line break
        added between shards that lack one), as one upload for FileStorage.upload_dataset."""
        plan = self.plan(account, dataset_id)
        if plan is None:
            raise ConflictError(
                f"dataset {dataset_id!r} has no registered upload; call getUploadEndpoint first"
            )
        folder = self.folder(account, dataset_id)
        missing = self.missing(account, dataset_id)
        if missing:
            raise ConflictError(f"these registered files were not uploaded yet: {', '.join(missing)}")
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        target = incoming_upload_path(self.incoming_dir)
        written = 0
        try:
            with open(target, "wb") as out:
                for name in plan.sizes:
                    with open(folder / name, "rb") as shard:
                        shutil.copyfileobj(shard, out)
                        shard.seek(-1, os.SEEK_END)
                        if shard.read(1) != b"\n":
                            out.write(b"\n")
                            written += 1
                    written += plan.sizes[name]
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return ReceivedUpload(target, ", ".join(plan.sizes), written, {})

    def discard(self, account: str, dataset_id: str) -> None:
        shutil.rmtree(self.folder(account, dataset_id), ignore_errors=True)

    def shard_path(self, account: str, dataset_id: str, name: str) -> Path:
        return self.folder(account, dataset_id) / name


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def remove_stale_parts(data_dir: Path, min_age_s: float = 3600.0) -> list[Path]:
    """Delete `.part` files older than `min_age_s` in the staging folders (a server killed during a PUT leaves
    one; a PUT in flight keeps writing to its file, so only old ones go). Returns what was removed."""
    cutoff = time.time() - min_age_s
    removed = []
    for folder in STAGING_FOLDERS:
        for path in sorted((Path(data_dir) / folder).glob("*/*/*.part")):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
