"""The BERT encoder network (post-norm transformer, learned absolute positions), for a padded batch of inputs.

One network serves every BERT-family checkpoint, RoBERTa and XLM-R included (they differ in position numbering
and head names only): sentence embedders (all-MiniLM, BGE, GTE, E5) use the final hidden states, a cross-encoder
(bge-reranker, ms-marco MiniLM) adds a tanh-dense head and a one-label classifier on the first token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ember.models.encoder.bert_config import EncoderConfig


class BertLayer(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.num_heads = config.num_heads
        self.gelu_approximation = config.gelu_approximation
        self.qkv = nn.Linear(hidden, 3 * hidden)  # query | key | value in one matmul
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """x [B, T, H]; attend [B, 1, 1, T], True where a key is a real token."""
        batch, length, hidden = x.shape
        q, k, v = (
            self.qkv(x)
            .view(batch, length, 3, self.num_heads, hidden // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )  # each [B, heads, T, head_dim]
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)  # [B, heads, T, head_dim]
        context = context.transpose(1, 2).reshape(batch, length, hidden)
        x = self.attention_norm(x + self.attention_out(context))
        inner = F.gelu(self.intermediate(x), approximate=self.gelu_approximation)
        return self.output_norm(x + self.output(inner))


class BertEncoder(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, hidden)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, hidden)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))
        # A cross-encoder's head: tanh(pooler(first token)) -> classifier.
        self.pooler = nn.Linear(hidden, hidden) if config.num_labels else None
        self.classifier = nn.Linear(hidden, config.num_labels) if config.num_labels else None

    def forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final hidden states [B, T, H] of input_ids [B, T]; mask [B, T] is True on real tokens (padding at
        the end of each row)."""
        positions = self._positions(input_ids, mask)  # [B, T] or [T]
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        if self.config.type_vocab_size == 1:  # RoBERTa: one segment, whatever the tokenizer says
            types = torch.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(types)
        )
        x = self.embedding_norm(x)
        attend = mask[:, None, None, :]  # [B, 1, 1, T]
        for layer in self.layers:
            x = layer(x, attend)
        return x

    def _positions(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.config.positions_after_padding_id:
            return torch.arange(input_ids.shape[1], device=input_ids.device)  # [T]
        # Hugging Face's RoBERTa rule: tokens that are not the padding id count up from pad_token_id + 1.
        counted = (mask & (input_ids != self.config.pad_token_id)).long()  # [B, T]
        return torch.cumsum(counted, dim=1) * counted + self.config.pad_token_id

    def classify(self, hidden: torch.Tensor) -> torch.Tensor:
        """A cross-encoder's logits [B, num_labels] from its final hidden states [B, T, H]."""
        if self.pooler is None or self.classifier is None:
            raise ValueError("this encoder has no classification head")
        return self.classifier(torch.tanh(self.pooler(hidden[:, 0])))


def hf_weight_name(name: str) -> str | None:
    """The parameter a Hugging Face BERT weight loads into (q/k/v as `layers.N.qkv.{query,key,value}.*`, fused
    by the loader), or None for a tensor the network does not use (position_ids buffers, MLM heads)."""
    for prefix in ("bert.", "roberta."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if name.startswith("embeddings."):
        rest = name[len("embeddings.") :]
        if rest.startswith("LayerNorm."):
            return "embedding_norm." + rest[len("LayerNorm.") :]
        if rest.split(".")[0] in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            return rest if rest.endswith(".weight") else None
        return None
    if name.startswith("encoder.layer."):
        index, _, rest = name[len("encoder.layer.") :].partition(".")
        for hf, ours in _LAYER_NAMES.items():
            if rest.startswith(hf + "."):
                return f"layers.{index}.{ours}.{rest[len(hf) + 1 :]}"
        return None
    # BERT's head: pooler.dense, then classifier; RoBERTa's: classifier.dense, then classifier.out_proj. Both
    # compute classifier(tanh(dense(first token))).
    if name.startswith("pooler.dense.") or name.startswith("classifier.dense."):
        return "pooler." + name.rsplit(".", 1)[-1]
    if name.startswith("classifier.out_proj."):
        return "classifier." + name.rsplit(".", 1)[-1]
    if name.startswith("classifier."):
        return name
    return None


_LAYER_NAMES = {
    "attention.self.query": "qkv.query",
    "attention.self.key": "qkv.key",
    "attention.self.value": "qkv.value",
    "attention.output.dense": "attention_out",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "output_norm",
}
