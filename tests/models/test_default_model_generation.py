"""The embedded default model end to end: ember's paged engine vs transformers' GGUF loading, token for token."""

from __future__ import annotations

import torch

from ember.engine.llm import LLM
from ember.engine.sampling_params import SamplingParams
from ember.models.attention_metadata import AttentionMetadata
from ember.models.loader import LoadConfig, LoadedModel, load_model

PROMPTS = [
    "The capital of France is",
    "def quicksort(items):\n",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea,",
]


def test_greedy_32_tokens_match_transformers(
    smollm_fp32_model: LoadedModel, smollm_hf_model: torch.nn.Module
) -> None:
    # smollm_fp32_model: ember's fp32 load of the default model; smollm_hf_model: transformers' own GGUF loading
    # of it, fp32 (both tests/conftest.py)
    fp32_model = smollm_fp32_model
    llm = LLM(fp32_model)
    ids = [fp32_model.tokenizer.encode(p) for p in PROMPTS]
    ours = llm.generate(ids, SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True))
    for prompt, out in zip(ids, ours, strict=True):
        assert out.outputs[0].token_ids == hf_greedy(smollm_hf_model, prompt, 32)


def hf_greedy(model: torch.nn.Module, prompt: list[int], count: int) -> list[int]:
    """Plain argmax decoding with transformers' KV cache; generate() would mask EOS under min_new_tokens."""
    tokens: list[int] = []
    with torch.inference_mode():
        out = model(torch.tensor([prompt]), use_cache=True)
        for _ in range(count):
            tokens.append(int(out.logits[0, -1].argmax()))
            out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens


def full_forward_logits(model: LoadedModel, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        attn = AttentionMetadata.for_prefill_without_cache([len(ids)])
        hidden = model.network(torch.tensor(ids), torch.arange(len(ids)), attn, None)
        return model.network.compute_logits(hidden)  # [T, V]


def test_packed_reference_path_gives_the_fp32_logits(smollm_fp32_model: LoadedModel) -> None:
    fp32_model = smollm_fp32_model
    packed = load_model(LoadConfig(weight_format="packed", quant_kernels=False))
    assert packed.weight_format == "packed"
    ids = fp32_model.tokenizer.encode(PROMPTS[3])
    torch.testing.assert_close(
        full_forward_logits(packed, ids), full_forward_logits(fp32_model, ids), rtol=1e-5, atol=1e-4
    )
