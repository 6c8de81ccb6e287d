"""The default serving path (packed GGUF blocks on the int8 kernel) keeps the model's choices.

Teacher-forced top-1 agreement over greedy continuations: against llama.cpp on the same GGUF when
llama-cpp-python is installed (the issue's guard, >= 98%), and always against ember's exact fp32 path. Both the
whole-sequence forward (prefill) and the token-by-token paged decode that serving runs (on an AVX2 CPU, the fused
decode step) are checked."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from ember.engine.forward_path import ForwardPath, NetworkForward
from ember.kernels import decode_step
from ember.models.attention_metadata import AttentionMetadata
from ember.models.kv_cache import allocate_kv_caches
from ember.models.loader import LoadConfig, LoadedModel, load_model

pytestmark = pytest.mark.usefixtures("native_kernels")

TEXTS = [
    "The history of the Roman Empire spans many centuries, beginning with",
    "def merge_sort(arr):\n    if len(arr) <= 1:\n        return arr\n",
    "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "Photosynthesis is the process by which plants",
]
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def packed() -> LoadedModel:
    model = load_model(LoadConfig(weight_format="packed"))
    assert model.kernel_linears == 121, "every linear of the default model runs on the kernel"
    return model


def logits(model: LoadedModel, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        attn = AttentionMetadata.for_prefill_without_cache([len(ids)])
        hidden = model.network(torch.tensor(ids), torch.arange(len(ids)), attn, None)
        return model.network.compute_logits(hidden)  # [T, V]


def paged_attention(start: int, end: int, block_size: int, num_blocks: int) -> AttentionMetadata:
    """One sequence's tokens start .. end - 1 into a paged KV cache of blocks 0 .. num_blocks - 1, the earlier
    tokens already cached."""
    return AttentionMetadata(
        query_lens=[end - start],
        context_lens=[end],
        query_start_loc=torch.tensor([0, end - start]),
        context_lens_tensor=torch.tensor([end]),
        block_tables=torch.arange(num_blocks)[None],  # [1, nb]
        slot_mapping=torch.arange(start, end),
        block_size=block_size,
    )


def decode_logits(model: LoadedModel, ids: list[int], prompt_len: int) -> torch.Tensor:
    """Logits at positions prompt_len - 1 .. len(ids) - 2, as serving computes them: the prompt as one prefill
    into a paged KV cache, then one decode step per token -> [len(ids) - prompt_len, V], each through the
    forward the engine's runner picks (on an AVX2 CPU, the fused decode step for the decodes)."""
    forward = NetworkForward(model.network)
    block_size = 16
    num_blocks = -(-len(ids) // block_size)
    caches = allocate_kv_caches(model.config, num_blocks, block_size, torch.float32, "cpu")

    def step(start: int, end: int) -> torch.Tensor:
        attn = paged_attention(start, end, block_size, num_blocks)
        hidden, path = forward(torch.tensor(ids[start:end]), torch.arange(start, end), attn, caches)
        if end - start == 1:
            decode_paths.add(path)
        return model.network.compute_logits(hidden[-1:])  # [1, V]

    with torch.inference_mode():
        rows = [step(0, prompt_len)] + [step(p, p + 1) for p in range(prompt_len, len(ids) - 1)]
    return torch.cat(rows)


decode_paths: set[ForwardPath] = set()  # the forwards decode_logits' one-token steps took


def greedy(model: LoadedModel, ids: list[int], count: int) -> list[int]:
    """`count` greedy tokens after `ids`: the prompt once into a paged KV cache, then one token per step, through
    the network's own modules. (A whole-sequence forward per new token, as before, ran the whole prefix again
    for every token: most of this test's time.) Only the text to score comes from here: the reference logits
    are one whole-sequence forward of the result, so how the continuation was decoded does not change what is
    compared."""
    block_size = 16
    num_blocks = -(-(len(ids) + count) // block_size)
    caches = allocate_kv_caches(model.config, num_blocks, block_size, torch.float32, "cpu")
    seq = list(ids)
    start = 0
    with torch.inference_mode():
        for _ in range(count):
            attn = paged_attention(start, len(seq), block_size, num_blocks)
            hidden = model.network(torch.tensor(seq[start:]), torch.arange(start, len(seq)), attn, caches)
            start = len(seq)
            seq.append(int(model.network.compute_logits(hidden[-1:])[0].argmax()))
    return seq[len(ids) :]


def agreement(ours: torch.Tensor, reference: np.ndarray, first: int, last: int) -> tuple[int, int]:
    positions = range(first, last)
    same = sum(int(int(ours[i].argmax()) == int(reference[i].argmax())) for i in positions)
    return same, len(positions)


def decode_agreement(
    model: LoadedModel, seq: list[int], prompt_len: int, reference: np.ndarray
) -> tuple[int, int]:
    ours = decode_logits(model, seq, prompt_len)
    return agreement(ours, reference[prompt_len - 1 :], 0, len(seq) - prompt_len)


def test_agreement_with_the_fp32_reference(packed: LoadedModel, smollm_fp32_model: LoadedModel) -> None:
    fp32 = smollm_fp32_model  # ember's exact fp32 path (tests/conftest.py)
    same = total = decode_same = 0
    for text in TEXTS:
        ids = fp32.tokenizer.encode(text)
        seq = ids + greedy(fp32, ids, NEW_TOKENS)
        reference = logits(fp32, seq).numpy()
        s, t = agreement(logits(packed, seq), reference, len(ids) - 1, len(seq) - 1)
        same, total = same + s, total + t
        decode_same += decode_agreement(packed, seq, len(ids), reference)[0]
    # Measured 250/256 prefill, 249/256 decode (~97%): activations are rounded to int8 per block, as llama.cpp
    # does.
    print(f"fp32: prefill {same}/{total}, paged decode {decode_same}/{total}")
    assert same / total >= 0.95, f"{same}/{total} positions agree with fp32"
    assert decode_same / total >= 0.95, f"paged decode: {decode_same}/{total} positions agree with fp32"
    expected = {ForwardPath.FUSED} if decode_step.available() else {ForwardPath.MODULES}
    assert decode_paths == expected, f"one-token decode steps took {decode_paths}"


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_agreement_with_llama_cpp_greedy_tokens(packed: LoadedModel) -> None:
    from llama_cpp import Llama

    llm = Llama(
        model_path=packed.source_path,
        n_ctx=1024,
        n_threads=torch.get_num_threads(),
        verbose=False,
        logits_all=True,
    )
    same = total = decode_same = 0
    for text in TEXTS:
        ids = packed.tokenizer.encode(text)
        llm.reset()
        llm.eval(ids)
        continuation = []
        for _ in range(NEW_TOKENS):
            continuation.append(llm.sample(temp=0.0))
            llm.eval([continuation[-1]])
        seq = ids + continuation
        llm.reset()
        llm.eval(seq)
        reference = np.array(llm.scores[: len(seq)])
        s, t = agreement(logits(packed, seq), reference, len(ids) - 1, len(seq) - 1)
        same, total = same + s, total + t
        decode_same += decode_agreement(packed, seq, len(ids), reference)[0]
    print(f"llama.cpp: prefill {same}/{total}, paged decode {decode_same}/{total}")
    assert same / total >= 0.98, f"{same}/{total} positions agree with llama.cpp"
    assert decode_same / total >= 0.98, f"paged decode: {decode_same}/{total} positions agree with llama.cpp"
