"""A loaded encoder and what it computes: token ids of texts (and of query/document pairs), one padded batch of
embeddings with the model's own pooling and normalization, or a cross-encoder's relevance of pairs; and how a
request's inputs are cut into batches of bounded size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from ember.models.encoder.bert import BertEncoder
from ember.models.encoder.pooling import Pooling


@dataclass(frozen=True)
class PairIds:
    """A cross-encoder's input: `[CLS] query [SEP] document [SEP]` with its token type ids."""

    token_ids: list[int]
    type_ids: list[int]


@dataclass
class EncoderModel:
    name: str
    aliases: tuple[str, ...]
    source_path: str
    network: BertEncoder
    tokenizer: Tokenizer
    pooling: Pooling
    normalize: bool
    max_input_tokens: int  # longest input, special tokens included
    load_seconds: float = 0.0

    @property
    def is_cross_encoder(self) -> bool:
        return self.network.classifier is not None

    @property
    def dimensions(self) -> int:
        return self.network.config.hidden_size * len(self.pooling.modes)

    @property
    def vocab_size(self) -> int:
        return self.network.config.vocab_size

    def encode(self, text: str) -> list[int]:
        # encode_batch, not encode: only the batch call lets go of the GIL while it tokenizes
        return self.tokenizer.encode_batch([text])[0].ids  # with the model's [CLS] ... [SEP]

    def encode_pair(self, query: str, document: str) -> PairIds:
        encoding = self.tokenizer.encode_batch([(query, document)])[0]
        return PairIds(encoding.ids, encoding.type_ids)

    @torch.inference_mode()
    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """One batch: a vector per input (unit length when the model normalizes)."""
        ids, mask = _padded(inputs)
        hidden = self.network(ids, mask)  # [B, T, H]
        vectors = self.pooling.pool(hidden, mask)  # [B, D]
        if self.normalize:
            vectors = F.normalize(vectors, p=2, dim=-1)
        return vectors.tolist()

    @torch.inference_mode()
    def score_pairs(self, pairs: list[PairIds]) -> list[float]:
        """One batch of a cross-encoder: sigmoid of its one logit per pair, in [0, 1]."""
        ids, mask = _padded([p.token_ids for p in pairs])
        types, _ = _padded([p.type_ids for p in pairs])
        logits = self.network.classify(self.network(ids, mask, types))  # [B, 1]
        return torch.sigmoid(logits[:, 0]).tolist()


def _padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """rows -> (ids [B, T] padded with 0 at the end, mask [B, T] True on real tokens)."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask


def plan_batches(lengths: list[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Input indices grouped into batches whose padded size (rows x longest row) stays within
    `max_batch_tokens` (a longer single input forms its own batch). Inputs of similar length share a batch, so
    little of the work is padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        widest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) >= max_batch_size or (len(current) + 1) * widest > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
