"""The architecture of a BERT-family encoder, read from a Hugging Face config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.models.errors import ModelLoadError

# The activations BERT checkpoints name in `hidden_act`, as torch's gelu approximations.
GELU_APPROXIMATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
ENCODER_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
# RoBERTa numbers positions from pad_token_id + 1 (position ids skip the padding id and everything below it).
_PADDING_OFFSET_TYPES = ("roberta", "xlm-roberta")


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of a BERT or RoBERTa / XLM-R encoder (post-norm, learned absolute positions)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    gelu_approximation: str = "none"
    pad_token_id: int = 0
    num_labels: int = 0
    """Outputs of a sequence-classification head (a cross-encoder has 1); 0: a plain encoder."""
    positions_after_padding_id: bool = False
    """RoBERTa's numbering: the first token is at position pad_token_id + 1."""

    def __post_init__(self) -> None:
        sizes = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")
        for name in (*sizes, "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def first_position(self) -> int:
        return self.pad_token_id + 1 if self.positions_after_padding_id else 0

    @property
    def max_tokens(self) -> int:
        """The longest input the position table covers."""
        return self.max_position_embeddings - self.first_position


def read_encoder_config(folder: Path) -> EncoderConfig:
    """EncoderConfig of the folder's config.json; ModelLoadError for anything but a BERT encoder."""
    path = folder / "config.json"
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(str(path), f"cannot read the model config: {error}") from None
    model_type = raw.get("model_type")
    if model_type not in ENCODER_MODEL_TYPES:
        raise ModelLoadError(
            str(path),
            f"model_type {model_type!r} is not an encoder ember serves (supported: {', '.join(ENCODER_MODEL_TYPES)})",
        )
    act = raw.get("hidden_act", "gelu")
    if act not in GELU_APPROXIMATIONS:
        raise ModelLoadError(str(path), f"hidden_act {act!r} is not supported (gelu, gelu_new)")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(str(path), "only absolute position embeddings are supported")
    architectures = raw.get("architectures") or []
    classifier = any(str(a).endswith("ForSequenceClassification") for a in architectures)
    num_labels = len(raw.get("id2label") or {0: "LABEL_0", 1: "LABEL_1"}) if classifier else 0
    try:
        return EncoderConfig(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=int(raw["num_attention_heads"]),
            intermediate_size=int(raw["intermediate_size"]),
            max_position_embeddings=int(raw["max_position_embeddings"]),
            type_vocab_size=int(raw.get("type_vocab_size", 2)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            gelu_approximation=GELU_APPROXIMATIONS[act],
            pad_token_id=int(raw.get("pad_token_id") or 0),
            num_labels=num_labels,
            positions_after_padding_id=model_type in _PADDING_OFFSET_TYPES,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(str(path), f"bad encoder config: {error}") from None
