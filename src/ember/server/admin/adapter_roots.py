"""Where POST /v1/adapters may read adapters from: the folders given with `--adapter-dir`, and in the data
directory the folders of fine-tuning jobs the caller's key sees (`adapters/<job id>`, `jobs/<job id>/...`).

A requested path is an absolute path or one relative to a root. It is resolved with every symlink and `..`
followed, and must land inside a root, as must the two files read from it; anything else, whether it exists or
not, gets the same answer ("no adapter folder ... in this server's adapter directories"), so the API cannot be
used to probe the server's file system.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ember.lora.adapter import WEIGHTS_FILE
from ember.lora.peft_config import CONFIG_FILE

JobVisible = Callable[[str], bool]
"""Whether the caller's key sees the fine-tuning job with this id."""

_JOB_FOLDERS = ("adapters", "jobs")  # the data directory's adapter folders, each named by a job id


class AdapterPathError(ValueError):
    """The requested path is not an adapter folder the caller may load; the message reveals nothing else."""


@dataclass(frozen=True)
class ResolvedAdapterPath:
    folder: Path  # real path, inside a root
    requested: str  # as the client wrote it: what error messages show instead of the server's path

    def client_message(self, message: str) -> str:
        """An error message about the folder, with the server's path replaced by the client's."""
        return message.replace(str(self.folder), self.requested)


class AdapterRoots:
    def __init__(self, adapter_dirs: tuple[Path, ...] = ()) -> None:
        self.adapter_dirs = tuple(Path(os.path.realpath(d)) for d in adapter_dirs)
        self.data_dir: Path | None = None

    def allow_job_folders(self, data_dir: Path) -> None:
        """Also allow the data directory's job folders (set up once, when fine-tuning is on)."""
        self.data_dir = Path(os.path.realpath(data_dir))

    @property
    def configured(self) -> bool:
        return bool(self.adapter_dirs) or self.data_dir is not None

    def resolve(self, requested: str, job_visible: JobVisible) -> ResolvedAdapterPath:
        if not self.configured:
            raise AdapterPathError(
                "this server loads adapters from no folder: start it with --adapter-dir DIR (or with a data "
                "directory, for fine-tuned adapters)"
            )
        roots = [*self.adapter_dirs, *([self.data_dir] if self.data_dir is not None else [])]
        given = Path(requested)
        candidates = [given] if given.is_absolute() else [root / given for root in roots]
        for candidate in candidates:
            folder = Path(os.path.realpath(candidate))
            if self._allowed(folder, job_visible):
                return ResolvedAdapterPath(folder, requested)
        raise AdapterPathError(
            f"no adapter folder {requested!r} in this server's adapter directories (a path relative to an "
            "--adapter-dir, or to the data directory for a fine-tuning job you own)"
        )

    def _allowed(self, folder: Path, job_visible: JobVisible) -> bool:
        root = self._root_of(folder, job_visible)
        if root is None or not folder.is_dir():
            return False
        # The files read from the folder must not lead out of the root either (a symlinked config or weights).
        return all(
            _inside(Path(os.path.realpath(folder / name)), root) for name in (CONFIG_FILE, WEIGHTS_FILE)
        )

    def _root_of(self, folder: Path, job_visible: JobVisible) -> Path | None:
        for root in self.adapter_dirs:
            if _inside(folder, root) and folder != root:
                return root
        if self.data_dir is not None and _inside(folder, self.data_dir):
            parts = folder.relative_to(self.data_dir).parts
            if len(parts) >= 2 and parts[0] in _JOB_FOLDERS and job_visible(parts[1]):
                return self.data_dir / parts[0] / parts[1]
        return None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
