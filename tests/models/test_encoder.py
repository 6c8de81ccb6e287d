"""The BERT encoder against transformers: the bundled all-MiniLM-L6-v2 (embedding parity, a retrieval sanity
check), every pooling mode and a cross-encoder on tiny random checkpoints, batching, and refused folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from encoder_helpers import minilm, oracle_embeddings, write_tiny_bert, write_tiny_roberta

from ember.models.encoder.encoder_model import plan_batches
from ember.models.encoder.loader import load_encoder
from ember.models.errors import ModelLoadError

TEXTS = [
    "A man is eating food.",
    "x",
    "The quick brown fox jumps over the lazy dog near the riverbank on a sunny afternoon.",
    "Embeddings map text to vectors; similar meanings land close together. " * 8,
    "Ünïcödé, emoji 🙂 and CJK 漢字 are tokenized too.",
]


def test_minilm_matches_transformers_with_its_own_pooling_and_normalization() -> None:
    model = minilm()
    assert (model.name, model.aliases) == ("all-MiniLM-L6-v2", ("sentence-transformers/all-MiniLM-L6-v2",))
    assert model.pooling.modes == ("mean",) and model.normalize and model.max_input_tokens == 256
    ours = torch.tensor(model.embed([model.encode(t) for t in TEXTS]))  # one padded batch
    reference = oracle_embeddings(TEXTS)
    cosines = torch.nn.functional.cosine_similarity(ours, reference)
    assert cosines.min().item() >= 0.9999, cosines.tolist()
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    alone = torch.tensor(model.embed([model.encode(TEXTS[1])]))[0]  # padding in a batch changes nothing
    assert torch.nn.functional.cosine_similarity(alone, ours[1], dim=0).item() >= 0.99999


CORPUS = [
    "Paris is the capital and largest city of France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The Great Wall of China was built over many centuries to protect against invasions.",
    "Python is a popular programming language known for its readable syntax.",
    "Regular exercise strengthens the heart and improves overall health.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Mount Everest is the highest mountain above sea level.",
    "Honey bees pollinate flowers while collecting nectar.",
]
QUERIES = [
    "What is the capital of France?",
    "How do plants make food from sunlight?",
    "ancient fortification in China",
    "which language is easy to read for coding",
    "benefits of working out",
    "why did stocks drop after the rate hike",
    "tallest mountain in the world",
    "insects that pollinate plants",
]


def test_retrieval_finds_the_matching_passage() -> None:
    model = minilm()
    documents = torch.tensor(model.embed([model.encode(t) for t in CORPUS]))
    queries = torch.tensor(model.embed([model.encode(q) for q in QUERIES]))
    best = (queries @ documents.T).argmax(dim=1).tolist()
    assert best == list(range(len(QUERIES)))


@pytest.mark.parametrize(
    "mode",
    [
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_lasttoken",
    ],
)
def test_each_pooling_mode_matches_its_definition(tmp_path: Path, mode: str) -> None:
    reference = write_tiny_bert(tmp_path, pooling={mode: True})
    model = load_encoder(tmp_path)
    assert not model.normalize
    texts = ["short one", "a somewhat longer input with more words in it"]
    ids = [model.encode(t) for t in texts]
    ours = torch.tensor(model.embed(ids))
    for row, tokens in enumerate(ids):
        with torch.no_grad():
            hidden = reference(input_ids=torch.tensor([tokens])).last_hidden_state[0]  # [T, H], no padding
        expected = {
            "pooling_mode_cls_token": hidden[0],
            "pooling_mode_max_tokens": hidden.max(dim=0).values,
            "pooling_mode_mean_sqrt_len_tokens": hidden.sum(dim=0) / len(tokens) ** 0.5,
            "pooling_mode_lasttoken": hidden[-1],
        }[mode]
        torch.testing.assert_close(ours[row], expected, atol=2e-5, rtol=1e-4)


def test_cross_encoder_scores_match_transformers(tmp_path: Path) -> None:
    reference = write_tiny_bert(tmp_path, cross_encoder=True)
    model = load_encoder(tmp_path)
    assert model.is_cross_encoder
    pairs = [("what is ember", "ember serves models"), ("a", "a much longer document about something else")]
    encoded = [model.encode_pair(q, d) for q, d in pairs]
    assert encoded[0].type_ids.count(1) > 0  # the document is segment B
    ours = model.score_pairs(encoded)
    for (q, d), score in zip(pairs, ours, strict=True):
        pair = model.encode_pair(q, d)
        with torch.no_grad():
            logit = reference(
                input_ids=torch.tensor([pair.token_ids]), token_type_ids=torch.tensor([pair.type_ids])
            ).logits[0, 0]
        assert score == pytest.approx(torch.sigmoid(logit).item(), abs=1e-5)


def test_roberta_numbers_positions_after_the_padding_id(tmp_path: Path) -> None:
    reference = write_tiny_roberta(tmp_path)
    model = load_encoder(tmp_path)
    assert model.max_input_tokens == 64  # 66 positions, the first two reserved
    ids = [[0, 5, 6, 7, 8, 9, 2], [0, 11, 2]]  # padded together: positions must not shift
    ours = torch.tensor(model.embed(ids))
    for row, tokens in enumerate(ids):
        with torch.no_grad():
            expected = reference(input_ids=torch.tensor([tokens])).last_hidden_state[0].mean(dim=0)
        torch.testing.assert_close(ours[row], expected, atol=2e-5, rtol=1e-4)


def test_an_xlm_roberta_cross_encoder_matches_transformers(tmp_path: Path) -> None:
    reference = write_tiny_roberta(tmp_path, cross_encoder=True)
    model = load_encoder(tmp_path)
    pairs = [model.encode_pair("what is ember", "ember serves models"), model.encode_pair("q", "d")]
    ours = model.score_pairs(pairs)
    for pair, score in zip(pairs, ours, strict=True):
        with torch.no_grad():
            logit = reference(input_ids=torch.tensor([pair.token_ids])).logits[0, 0]
        assert score == pytest.approx(torch.sigmoid(logit).item(), abs=1e-5)


def test_batches_stay_within_the_padded_token_budget() -> None:
    lengths = [5, 100, 7, 60, 3, 100, 8]
    batches = plan_batches(lengths, max_batch_tokens=200, max_batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3 and len(batch) * max(lengths[i] for i in batch) <= 200
    assert plan_batches([500, 2], max_batch_tokens=100, max_batch_size=8) == [
        [0],
        [1],
    ]  # too long alone: own batch


def test_folders_it_cannot_serve_exactly_are_refused(tmp_path: Path) -> None:
    write_tiny_bert(tmp_path, pooling={"pooling_mode_mean_tokens": True})
    modules = json.loads((tmp_path / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="Dense"):
        load_encoder(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "modules.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="not an encoder"):
        load_encoder(tmp_path)
    with pytest.raises(ModelLoadError, match="Hugging Face folder"):
        load_encoder(tmp_path / "missing")
