"""What the encoder tests share: the bundled all-MiniLM-L6-v2 (loaded once), the transformers oracle for it,
and tiny random BERT folders written in the Hugging Face / sentence-transformers layout."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    RobertaConfig,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from ember.models.encoder.default_encoder import default_encoder_path
from ember.models.encoder.encoder_model import EncoderModel
from ember.models.encoder.loader import load_encoder


@cache
def minilm() -> EncoderModel:
    return load_encoder(default_encoder_path())


@cache
def minilm_oracle() -> BertModel:
    return BertModel.from_pretrained(default_encoder_path()).eval()


def oracle_embeddings(texts: list[str]) -> torch.Tensor:
    """sentence-transformers' all-MiniLM-L6-v2 recipe on transformers' BertModel: mean over real tokens, then
    L2-normalized; the oracle's own padding and attention mask."""
    model = minilm()
    ids = [model.encode(t) for t in texts]
    width = max(len(i) for i in ids)
    input_ids = torch.tensor([i + [0] * (width - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    with torch.no_grad():
        hidden = minilm_oracle()(input_ids=input_ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)


TINY_BERT = dict(
    vocab_size=30522,  # MiniLM's tokenizer.json is reused
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
)


def write_tiny_bert(
    folder: Path, *, cross_encoder: bool = False, pooling: dict[str, bool] | None = None, seed: int = 0
) -> torch.nn.Module:
    """A random BERT (or cross-encoder) saved by transformers into `folder`, with MiniLM's tokenizer; with
    `pooling`, also a sentence-transformers modules.json and 1_Pooling/config.json. Returns the reference."""
    torch.manual_seed(seed)
    if cross_encoder:
        config = BertConfig(**TINY_BERT, num_labels=1)
        reference: torch.nn.Module = BertForSequenceClassification(config).eval()
    else:
        reference = BertModel(BertConfig(**TINY_BERT), add_pooling_layer=False).eval()
    reference.save_pretrained(folder, safe_serialization=True)
    shutil.copy(Path(default_encoder_path()) / "tokenizer.json", folder / "tokenizer.json")
    if pooling is not None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": 32, **pooling})
        )
    return reference


def write_tiny_roberta(folder: Path, *, cross_encoder: bool = False, seed: int = 0) -> torch.nn.Module:
    """A random RoBERTa embedder (mean-pooled, sentence-transformers layout) or a one-label XLM-R cross-encoder
    (bge-reranker's architecture), with MiniLM's tokenizer (any ids below the vocabulary size do)."""
    torch.manual_seed(seed)
    shape = {**TINY_BERT, "max_position_embeddings": 66, "type_vocab_size": 1, "pad_token_id": 1}
    if cross_encoder:
        reference: torch.nn.Module = XLMRobertaForSequenceClassification(
            XLMRobertaConfig(**shape, num_labels=1)
        ).eval()
        reference.save_pretrained(folder, safe_serialization=True)
        shutil.copy(Path(default_encoder_path()) / "tokenizer.json", folder / "tokenizer.json")
        return reference
    reference = RobertaModel(RobertaConfig(**shape), add_pooling_layer=False).eval()
    reference.save_pretrained(folder, safe_serialization=True)
    shutil.copy(Path(default_encoder_path()) / "tokenizer.json", folder / "tokenizer.json")
    return reference
