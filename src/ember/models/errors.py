"""The one error type every model-loading failure is reported as."""

from __future__ import annotations


class ModelLoadError(Exception):
    """A model file could not be loaded; `str()` names the file and the problem in one line."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"
