"""A sentence-transformers folder's module pipeline (`modules.json`): where the transformer's files are, how its
token states are pooled, whether the vector is normalized, and how many tokens one input may have.

Only the modules ember computes exactly are accepted (Transformer, Pooling, Normalize); a Dense projection or
any other module is refused at load, since dropping it would serve different vectors than the model's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.models.encoder.pooling import Pooling, read_pooling
from ember.models.errors import ModelLoadError


@dataclass(frozen=True)
class SentencePipeline:
    transformer_dir: Path
    pooling: Pooling
    normalize: bool
    max_seq_length: int | None  # sentence_bert_config.json's; None: the model's position limit


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(str(path), f"cannot read {path.name}: {error}") from None


def read_sentence_pipeline(folder: Path) -> SentencePipeline:
    """The folder's pipeline; a plain Hugging Face folder (no modules.json) is mean-pooled and not normalized,
    sentence-transformers' own default for a bare transformer."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return SentencePipeline(folder, Pooling(("mean",)), False, _max_seq_length(folder))
    modules = _read_json(modules_path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelLoadError(str(modules_path), "modules.json must be a list of module objects")
    transformer_dir: Path | None = None
    pooling: Pooling | None = None
    normalize = False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = folder / str(module.get("path", ""))
        if kind == "Transformer" and transformer_dir is None:
            transformer_dir = path
        elif kind == "Pooling" and pooling is None:
            pooling = read_pooling(path)
        elif kind == "Normalize":
            normalize = True
        else:
            raise ModelLoadError(
                str(modules_path),
                f"module {module.get('type')!r} is not supported (ember computes Transformer, Pooling, Normalize)",
            )
    if transformer_dir is None:
        raise ModelLoadError(str(modules_path), "modules.json lists no Transformer module")
    return SentencePipeline(
        transformer_dir, pooling or Pooling(("mean",)), normalize, _max_seq_length(transformer_dir)
    )


def _max_seq_length(folder: Path) -> int | None:
    path = folder / "sentence_bert_config.json"
    if not path.is_file():
        return None
    value = _read_json(path).get("max_seq_length") if isinstance(_read_json(path), dict) else None
    return int(value) if isinstance(value, int) and value > 0 else None
