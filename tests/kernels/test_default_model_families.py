"""The default model answers the same on every kernel family this CPU runs (the test ids say which ran here).

"What is the capital of France?" is a near-tie on this model (fp32 logits: "The" 24.14, "La" 24.05), so any
difference in the kernels' float order can flip it: AVX-512 VNNI once did ("La femme de France, ..."), while
no less accurate than AVX2. The families now return the same bits; this checks it end to end, through the
paged prefill and the fused decode steps serving runs."""

from __future__ import annotations

import pytest
import torch

from ember import kernels
from ember.chat.template import ChatTemplate
from ember.engine.forward_path import ForwardPath, NetworkForward
from ember.kernels.kernel_isa import ISA_ENV
from ember.models.attention_metadata import AttentionMetadata
from ember.models.kv_cache import allocate_kv_caches
from ember.models.loader import LoadConfig, load_model

pytestmark = pytest.mark.usefixtures("fused_decode_kernels")

FUSED_FAMILIES = [isa for isa in kernels.supported_isas_here() if isa != "scalar"]  # scalar has no fused step
NEW_TOKENS = 8
BLOCK_SIZE = 16


def greedy_answer(monkeypatch: pytest.MonkeyPatch, isa: str) -> tuple[list[int], torch.Tensor, str]:
    """(greedy token ids, the first token's logits, the text) for the Paris question on kernel family `isa`."""
    monkeypatch.setenv(ISA_ENV, isa)
    model = load_model(LoadConfig(weight_format="packed"))
    assert model.chat_template is not None
    prompt = ChatTemplate(model.chat_template).render(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ]
    )
    ids = model.tokenizer.encode(prompt)
    forward = NetworkForward(model.network)
    num_blocks = -(-(len(ids) + NEW_TOKENS) // BLOCK_SIZE)
    caches = allocate_kv_caches(model.config, num_blocks, BLOCK_SIZE, torch.float32, "cpu")

    def step(tokens: list[int], start: int) -> tuple[torch.Tensor, ForwardPath]:
        end = start + len(tokens)
        attn = AttentionMetadata(
            query_lens=[len(tokens)],
            context_lens=[end],
            query_start_loc=torch.tensor([0, len(tokens)]),
            context_lens_tensor=torch.tensor([end]),
            block_tables=torch.arange(num_blocks)[None],
            slot_mapping=torch.arange(start, end),
            block_size=BLOCK_SIZE,
        )
        hidden, path = forward(torch.tensor(tokens), torch.arange(start, end), attn, caches)
        return model.network.compute_logits(hidden[-1:])[0], path  # [V]

    with torch.inference_mode():
        first_logits, _ = step(ids, 0)
        answer = [int(first_logits.argmax())]
        for position in range(len(ids), len(ids) + NEW_TOKENS - 1):
            logits, path = step(answer[-1:], position)
            assert path is ForwardPath.FUSED, "serving decodes on the fused step"
            answer.append(int(logits.argmax()))
    return answer, first_logits, model.tokenizer.decode(answer)


def test_the_paris_answer_is_the_same_on_every_kernel_family(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {isa: greedy_answer(monkeypatch, isa) for isa in FUSED_FAMILIES}
    print({isa: text for isa, (_, _, text) in answers.items()})
    first_ids, first_logits, first_text = answers[FUSED_FAMILIES[0]]
    assert "Paris" in first_text
    for isa, (ids, logits, text) in answers.items():
        assert torch.equal(logits, first_logits), (
            f"{isa}: the prefill's logits differ from {FUSED_FAMILIES[0]}'s"
        )
        assert ids == first_ids, f"{isa} answered {text!r}, {FUSED_FAMILIES[0]} {first_text!r}"
