"""F16 / BF16 linears of a GGUF served packed run on the int8 kernels through a Q8_0 stand-in (and the fused decode
step), close to the exact fp32 load; `--weight-format fp32` keeps them exact."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from gguf_helpers import TinyGGUFSpec, write_tiny_gguf

from ember.models.fused_decode import FusedDecodeStack
from ember.models.loader import LoadConfig, load_model
from ember.models.quant.packed_linear import PackedLinear

pytestmark = pytest.mark.usefixtures("native_kernels")


@pytest.mark.parametrize("qtype", ["F16", "BF16"])
def test_float_linears_run_on_the_kernels_close_to_fp32(
    tmp_path: Path, qtype: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / f"tiny-{qtype}.gguf")
    write_tiny_gguf(path, TinyGGUFSpec(qtype=qtype, tied=False))
    with caplog.at_level(logging.INFO, logger="ember.models.loader"):
        packed = load_model(LoadConfig(path))
    exact = load_model(LoadConfig(path, weight_format="fp32"))

    linears = [m for m in packed.network.modules() if isinstance(m, (PackedLinear, torch.nn.Linear))]
    assert linears and all(isinstance(m, PackedLinear) and m.prepared is not None for m in linears)
    assert {(m.converted_from, m.qtype) for m in linears} == {("fp32", "Q8_0")}
    assert f"{len(linears)} fp32 as Q8_0" in caplog.text
    assert FusedDecodeStack.build(packed.network) is not None
    assert not any(isinstance(m, PackedLinear) for m in exact.network.modules())

    # Each converted linear against its exact fp32 self: the int8 activations' error plus the stand-in's.
    ids = torch.randint(0, packed.config.vocab_size, (12,))
    with torch.inference_mode():
        x = exact.network.embed_tokens(ids)  # [12, hidden]
        pairs = [(packed.network.lm_head, exact.network.lm_head)]
        pairs += [(p.mlp, e.mlp) for p, e in zip(packed.network.layers, exact.network.layers, strict=True)]
        for ours, theirs in pairs:
            y, reference = ours(x), theirs(x)
            error = float((y - reference).norm() / reference.norm())
            assert error < 3e-2, f"{type(ours).__name__} on the Q8_0 stand-in is {error:.4f} off fp32"
