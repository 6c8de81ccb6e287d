"""A live server on the tiny random chat model with the bundled all-MiniLM-L6-v2 as its embedding model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import torch
from live_server import TINY_MODEL, RunningServer, serve_in_thread, tiny_engine

from ember.models.encoder.default_encoder import default_encoder_path
from ember.models.encoder.encoder_model import EncoderModel
from ember.models.encoder.loader import load_encoder
from ember.server.app import build_app
from ember.server.common.config import ServerConfig

ENCODER = "all-MiniLM-L6-v2"
ENCODER_ID = f"accounts/fireworks/models/{ENCODER}"
EMBEDDING_CAP = 2_000  # max_embedding_tokens of this server


@cache
def bundled_encoder() -> EncoderModel:
    return load_encoder(default_encoder_path())


def running_encoder_server() -> Iterator[RunningServer]:
    """For a test module's fixture: `yield from running_encoder_server()`."""
    engine = tiny_engine()
    config = ServerConfig(model_name=TINY_MODEL, max_embedding_tokens=EMBEDDING_CAP, max_embedding_inputs=32)
    server, thread, url = serve_in_thread(build_app(engine, config, None, bundled_encoder()))
    running = RunningServer(engine, config, url, server, thread)
    yield running
    running.stop()


def write_tiny_cross_encoder(folder: Path) -> None:
    """A random one-label BertForSequenceClassification saved by transformers, with MiniLM's tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    shutil.copy(Path(default_encoder_path()) / "tokenizer.json", folder / "tokenizer.json")
