"""The same workloads on peer engines, when they are installed: transformers (fp32) and llama.cpp."""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from dataclasses import dataclass, field

import torch

from ember.bench.workloads import PromptMaker


@dataclass
class PeerResult:
    name: str
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: dict[int, float] = field(default_factory=dict)  # streams -> aggregate tok/s
    note: str = ""


def transformers_peer(
    gguf_path: str, prompts: PromptMaker, streams: list[int], new_tokens: int
) -> PeerResult:
    """transformers' fp32 model loaded from the same GGUF, using its own generate() loop."""
    if importlib.util.find_spec("transformers") is None:
        return PeerResult("transformers", note="not installed")
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    result = PeerResult("transformers fp32")
    with torch.inference_mode():
        ids = torch.tensor([prompts.make(512)])
        model(ids)  # warm-up
        times = []
        for _ in range(3):
            ids = torch.tensor([prompts.make(512)])
            start = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - start)
        result.prefill_tokens_per_s = 512 / statistics.median(times)
        for count in streams:
            batch = torch.tensor([prompts.make(32) for _ in range(count)])
            kwargs = {"do_sample": False, "pad_token_id": 0}
            start = time.perf_counter()
            model.generate(batch, max_new_tokens=1, min_new_tokens=1, **kwargs)
            first = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(batch, max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1, **kwargs)
            total = time.perf_counter() - start
            result.decode_tokens_per_s[count] = count * new_tokens / max(total - first, 1e-9)
    return result


def llama_cpp_peer(gguf_path: str, prompts: PromptMaker, threads: int, new_tokens: int) -> PeerResult:
    """llama.cpp through llama-cpp-python on the same GGUF file (its Python API runs one sequence)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return PeerResult("llama.cpp", note="not installed (pip install llama-cpp-python==0.3.36)")
    from llama_cpp import Llama

    llm = Llama(model_path=gguf_path, n_ctx=2048, n_batch=512, n_threads=threads, verbose=False)
    result = PeerResult("llama.cpp", note="one stream only through llama-cpp-python")
    rates = []
    for _ in range(3):
        llm.reset()
        tokens = prompts.make(512)
        start = time.perf_counter()
        llm.eval(tokens)
        rates.append(512 / (time.perf_counter() - start))
    result.prefill_tokens_per_s = statistics.median(rates)
    llm.reset()
    llm.eval(prompts.make(32))
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = llm.sample(temp=0.0)
        llm.eval([token])
    result.decode_tokens_per_s[1] = new_tokens / (time.perf_counter() - start)
    return result
