"""How the engine serves LoRA adapters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoraConfig:
    """Adapter serving settings of one engine."""

    max_loaded: int = 8
    """Adapters kept in memory; beyond it the least recently used idle one is dropped (reloaded on demand)."""

    strict_base_model: bool = False
    """Refuse an adapter whose adapter_config.json names a different base model (default: log a warning;
    the shapes are always checked)."""

    adapters: tuple[tuple[str, str], ...] = ()
    """(name, PEFT folder) pairs registered at start-up."""

    def __post_init__(self) -> None:
        if self.max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {self.max_loaded}")
        names = [name for name, _ in self.adapters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"adapter name(s) given twice: {', '.join(duplicates)}")
        for name, path in self.adapters:
            if not name or not path:
                raise ValueError(f"an adapter needs a name and a path, got ({name!r}, {path!r})")
