"""The models `ember serve` serves: `--model` (repeatable, `PATH` or `NAME=PATH`) and `--models-file` (TOML) read
into ModelSpecs, with Ollama-style keep-alive durations (`5m`, `90s`, `1h30m`, `0`, `-1`).

The first model is the server's default model: requests without `model` run on it, fine-tuning trains on it, and
it stays loaded. Every further model can be loaded on first use (`lazy`) and unloaded after `keep_alive` idle.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

NEVER = None  # keep_alive_s of a model that stays loaded
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_FILE_KEYS = (
    "name",
    "path",
    "aliases",
    "lazy",
    "keep_alive",
    "kv_cache_gib",
    "threads",
    "max_model_len",
    "lora",
)


class ModelSpecError(ValueError):
    """A bad --model, --models-file or --keep-alive value; the message names it."""


def parse_keep_alive(text: str | int | float) -> float | None:
    """Ollama's keep_alive: a duration (`5m`, `1h30m`, `90s`, `250ms`, or a number of seconds) after the last
    request before the model is unloaded; `0` unloads it as soon as it is idle; a negative value never (None)."""
    if isinstance(text, bool):
        raise ModelSpecError(f"keep_alive must be a duration such as 5m, 0 or -1, got {text!r}")
    if isinstance(text, int | float):
        number: float | None = float(text)
    else:
        value = text.strip().lower()
        if value.startswith("-") and value[1:]:  # Ollama: any negative duration keeps the model loaded
            parse_keep_alive(value[1:])  # still a duration: `-5x` is a mistake, not "never"
            return None
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is not None:
        if not math.isfinite(number):
            raise ModelSpecError(f"keep_alive must be a finite duration, got {text!r}")
        return None if number < 0 else number
    seconds = 0.0
    position = 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        amount, unit = float(match.group(1)), match.group(2)
        seconds += amount * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        position = match.end()
    if position != len(value) or not value:
        raise ModelSpecError(f"keep_alive must be a duration such as 5m, 1h30m, 90s, 0 or -1, got {text!r}")
    return seconds


@dataclass(frozen=True)
class ModelSpec:
    """One base model to serve, with its own engine. None in a setting means the server-wide flag's value."""

    name: str | None
    """The name clients send as `model`; None: the model's own name (from its file or folder)."""
    path: str | None
    """GGUF file or Hugging Face folder; None: the embedded default model."""
    aliases: tuple[str, ...] = ()
    lazy: bool = False
    """Loaded on its first request instead of at start-up."""
    keep_alive_s: float | None = NEVER
    """Seconds idle before it is unloaded (0: as soon as it is idle); None: never."""
    kv_cache_gib: float | None = None
    threads: int | None = None
    """Compute threads of its engine's steps (None: the server's --threads, else the idle cores)."""
    max_model_len: int | None = None
    loras: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    """PEFT adapters served on this model's engine: (name, folder)."""

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name or "/" in self.name):
            raise ModelSpecError(f"a model name must be non-empty and without '/', got {self.name!r}")
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            raise ModelSpecError(f"kv_cache_gib must be positive, got {self.kv_cache_gib}")
        for key in ("threads", "max_model_len"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ModelSpecError(f"{key} must be a positive integer, got {value!r}")

    @property
    def label(self) -> str:
        return self.name or (Path(self.path).name if self.path else "the default model")


def spec_from_flag(value: str) -> ModelSpec:
    """One --model value: `PATH`, or `NAME=PATH` when the part before the first `=` is a name (no `/`)."""
    name, sep, path = value.partition("=")
    if sep and name and "/" not in name and path:
        return ModelSpec(name=name, path=path)
    if not value:
        raise ModelSpecError("--model needs a GGUF file or a model folder")
    return ModelSpec(name=None, path=value)


def specs_from_file(
    path: Path, default_keep_alive: float | None, default_lazy: bool = False
) -> list[ModelSpec]:
    """The `[[models]]` tables of a TOML models file (keys: name, path, aliases, lazy, keep_alive,
    kv_cache_gib, threads, max_model_len, lora = {NAME = PATH}); a top-level `keep_alive` is every model's
    default. Relative paths are taken from the file's folder."""
    try:
        document = tomllib.loads(path.read_text())
    except OSError as error:
        raise ModelSpecError(f"--models-file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ModelSpecError(f"--models-file {path}: not valid TOML: {error}") from None
    unknown = sorted(set(document) - {"models", "keep_alive"})
    if unknown:
        raise ModelSpecError(f"--models-file {path}: unknown top-level key(s) {', '.join(unknown)}")
    if "keep_alive" in document:
        default_keep_alive = parse_keep_alive(document["keep_alive"])
    tables = document.get("models")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ModelSpecError(f"--models-file {path}: needs one or more [[models]] tables")
    return [
        _spec_from_table(table, i, path.parent, default_keep_alive, default_lazy)
        for i, table in enumerate(tables)
    ]


def _spec_from_table(
    table: dict[str, Any], index: int, folder: Path, default_keep_alive: float | None, default_lazy: bool
) -> ModelSpec:
    where = f"--models-file models[{index}]"
    unknown = sorted(set(table) - set(_FILE_KEYS))
    if unknown:
        raise ModelSpecError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_FILE_KEYS)})")
    path = table.get("path")
    if path is not None and (not isinstance(path, str) or not path):
        raise ModelSpecError(f"{where}.path must be a file or folder path")
    aliases = table.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ModelSpecError(f"{where}.aliases must be a list of names")
    loras = table.get("lora", {})
    if not isinstance(loras, dict) or not all(isinstance(p, str) and p for p in loras.values()):
        raise ModelSpecError(f"{where}.lora must be a table of NAME = PATH")
    lazy = table.get("lazy", default_lazy)
    if not isinstance(lazy, bool):
        raise ModelSpecError(f"{where}.lazy must be true or false")
    kv = table.get("kv_cache_gib")
    if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int | float)):
        raise ModelSpecError(f"{where}.kv_cache_gib must be a number")
    try:
        keep_alive = parse_keep_alive(table["keep_alive"]) if "keep_alive" in table else default_keep_alive
        return ModelSpec(
            name=table.get("name"),
            path=None if path is None else str(folder / Path(path).expanduser()),
            aliases=tuple(aliases),
            lazy=lazy,
            keep_alive_s=keep_alive,
            kv_cache_gib=None if kv is None else float(kv),
            threads=table.get("threads"),
            max_model_len=table.get("max_model_len"),
            loras=tuple((name, str(folder / Path(p).expanduser())) for name, p in loras.items()),
        )
    except ModelSpecError as error:
        raise ModelSpecError(f"{where}: {error}") from None


def specs_from_args(
    model_flags: list[str], models_file: Path | None, lazy: bool, keep_alive: str | None
) -> list[ModelSpec]:
    """Every model `ember serve` was asked for, the default model first: --model values in order, then the
    models file's. `--lazy` and `--keep-alive` are the defaults the file's own keys override. The first model is
    the default model: it loads at start-up and stays (the registry ignores its lazy and keep_alive)."""
    default_keep_alive = NEVER if keep_alive is None else parse_keep_alive(keep_alive)
    specs = [
        replace(spec_from_flag(value), lazy=lazy, keep_alive_s=default_keep_alive) for value in model_flags
    ]
    if models_file is not None:
        specs += specs_from_file(models_file, default_keep_alive, lazy)
    for spec in specs:  # before any load: a typo fails at once, not after the first models loaded
        if spec.path is not None and not Path(spec.path).exists():
            raise ModelSpecError(f"model {spec.label!r}: no such file or folder: {spec.path}")
    if not specs:
        specs = [ModelSpec(name=None, path=None)]
    return specs
