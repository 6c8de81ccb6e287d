"""`--quantization q8_0|q4_0|q4_k` on a safetensors checkpoint: packed weights on the int8 kernels, the model's
choices kept (teacher-forced top-1 against the fp32 load, through the real engine), and clear refusals."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch
from test_hf_loader import PROMPTS, logits_of, reference_logits, save_checkpoint
from torch import nn

from ember import kernels
from ember.bench.http_server import free_port, wait_until_healthy
from ember.cli import build_parser, main
from ember.engine.llm import LLM
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config, write_tiny_hf_folder
from ember.models.errors import ModelLoadError
from ember.models.hf_loader import load_hf_folder
from ember.models.llama import DecoderModel
from ember.models.load_quantization import QUANTIZATIONS, CheckpointQuantizer
from ember.models.loader import LoadConfig, LoadedModel, load_model
from ember.models.quant.packed_linear import PackedLinear
from ember.models.quant.packed_weight import PackedWeight

# Every linear reads 256 or 512 features, so q4_k quantizes them all to Q4_K (the stock tiny model's 64 do not).
Q4_K_SIZES = dict(hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=2, head_dim=64)
TEXTS = [
    "The history of the Roman Empire spans many centuries, beginning with",
    "def merge_sort(arr):\n    if len(arr) <= 1:\n        return arr\n",
    "Photosynthesis is the process by which plants",
    "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hf_folder(tmp_path_factory.mktemp("quantize") / "tiny-256", **Q4_K_SIZES)


def linear_qtypes(model: LoadedModel) -> dict[str, str]:
    """Module name -> qtype of each packed linear, "dense" for an nn.Linear."""
    found = {}
    for name, module in model.network.named_modules():
        if isinstance(module, PackedLinear):
            found[name] = module.qtype
        elif isinstance(module, torch.nn.Linear):
            found[name] = "dense"
    return found


def weight_bytes(model: LoadedModel) -> int:
    tensors = [*model.network.parameters(), *model.network.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize(
    ("quantization", "body", "described"),
    [
        ("q8_0", "Q8_0", "f32 -> q8_0: 15 Q8_0 matrices"),
        ("q4_0", "Q4_0", "f32 -> q4_0: 14 Q4_0 + 1 Q8_0 matrices"),
        ("Q4_K", "Q4_K", "f32 -> q4_k: 14 Q4_K + 1 Q8_0 matrices"),
    ],
)
def test_linears_are_packed_and_run_on_the_kernel(
    folder: Path, quantization: str, body: str, described: str, request: pytest.FixtureRequest
) -> None:
    model = load_model(LoadConfig(str(folder), quantization=quantization))
    assert model.weight_format == "packed" and model.source_format == "safetensors"
    assert model.file_quantization == described  # what the start-up log line shows
    qtypes = linear_qtypes(model)
    assert qtypes.pop("lm_head") == "Q8_0"  # the output matrix (tied to the embedding) is kept at Q8_0
    assert len(qtypes) == 8 and set(qtypes.values()) == {body}  # q|k|v, o, gate|up, down of two layers
    assert model.network.embed_tokens.packed_qtype == "Q8_0"  # tied: the same blocks as lm_head
    assert all(p.dtype == torch.float32 for p in model.network.parameters())  # norms stay fp32
    fp32 = load_model(LoadConfig(str(folder), weight_format="fp32"))
    assert weight_bytes(model) < weight_bytes(fp32) / 3
    # Without the native extension nothing runs on the kernel: that half skips (fails under `make test`)
    # instead of passing on 0 kernel linears.
    if not kernels.available():
        request.getfixturevalue("native_kernels")
    assert model.kernel_linears == 9  # every linear, as for a GGUF


@pytest.fixture(scope="module")
def fp32_top1(folder: Path) -> tuple[list[list[int]], list[list[int]]]:
    """Greedy continuations of the fp32 load, and its top-1 choice at every position of them."""
    fp32 = LLM(load_model(LoadConfig(str(folder), weight_format="fp32")), engine_config=tiny_engine_config())
    outputs = fp32.generate(TEXTS, SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True))
    sequences = [out.prompt_token_ids + out.outputs[0].token_ids for out in outputs]
    return sequences, teacher_forced_top1(fp32, sequences)


def teacher_forced_top1(llm: LLM, sequences: list[list[int]]) -> list[list[int]]:
    """The model's most likely next token after every prefix of each sequence, via the engine's prompt logprobs."""
    outputs = llm.generate(sequences, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1))
    return [[entry.top[0][0] for entry in out.prompt_logprobs[1:]] for out in outputs]


# Measured on this random model (246 positions): q8_0 98.4%, q4_0 84.1%, q4_k 85.0%; other seeds of it
# 95.5-98.4% / 78.5-87.0% / 85.0-88.2%. A random network's logits are flatter than a trained one's, so
# 4-bit weights flip more of its choices than they do for a real model.
@pytest.mark.parametrize(("quantization", "at_least"), [("q8_0", 0.93), ("q4_0", 0.75), ("q4_k", 0.75)])
def test_top1_agreement_with_the_fp32_load(
    folder: Path, fp32_top1: tuple[list[list[int]], list[list[int]]], quantization: str, at_least: float
) -> None:
    sequences, reference = fp32_top1
    llm = LLM(
        load_model(LoadConfig(str(folder), quantization=quantization)), engine_config=tiny_engine_config()
    )
    pairs = [
        (a, b)
        for ours, ref in zip(teacher_forced_top1(llm, sequences), reference, strict=True)
        for a, b in zip(ours, ref, strict=True)
    ]
    same = sum(a == b for a, b in pairs)
    assert same / len(pairs) >= at_least, f"{quantization}: {same}/{len(pairs)} positions agree with fp32"


def test_matrices_that_do_not_fit_the_block_fall_back(tmp_path: Path) -> None:
    """q4_k on 64-feature rows: Q8_0 instead (llama.cpp would pick Q5_0, which ember cannot quantize to).
    A down_proj reading 80 features fits no 32-block at all and stays fp32; the model still generates."""
    stock = write_tiny_hf_folder(tmp_path / "stock")
    model = load_model(LoadConfig(str(stock), quantization="q4_k"))
    assert model.file_quantization == "f32 -> q4_k: 15 Q8_0 matrices"
    assert set(linear_qtypes(model).values()) == {"Q8_0"}

    odd = write_tiny_hf_folder(tmp_path / "odd", intermediate_size=80)
    model = load_model(LoadConfig(str(odd), quantization="q4_0"))
    assert model.file_quantization == "f32 -> q4_0: 2 F32 + 12 Q4_0 + 1 Q8_0 matrices"
    qtypes = linear_qtypes(model)
    assert qtypes["layers.0.mlp.down_proj"] == "dense" and qtypes["layers.0.mlp.gate_up_proj"] == "Q4_0"
    out = LLM(model, engine_config=tiny_engine_config()).generate(["Hello"], SamplingParams(max_tokens=4))
    assert len(out[0].outputs[0].token_ids) == 4


def test_untied_embedding_takes_the_requested_type(tmp_path: Path) -> None:
    untied = write_tiny_hf_folder(tmp_path / "untied", tie_word_embeddings=False)
    model = load_model(LoadConfig(str(untied), quantization="q4_0"))
    assert model.network.embed_tokens.packed_qtype == "Q4_0"  # as llama.cpp quantizes token_embd
    assert linear_qtypes(model)["lm_head"] == "Q8_0"
    assert model.file_quantization == "f32 -> q4_0: 15 Q4_0 + 1 Q8_0 matrices"


def test_which_weights_get_which_type() -> None:
    from ember.engine.testing import tiny_config

    tied = CheckpointQuantizer("Q4_K", tiny_config(), ["model.embed_tokens.weight", "lm_head.weight"])
    assert tied.wanted_qtype("model.layers.3.self_attn.k_proj.weight") == "Q4_K"
    assert tied.wanted_qtype("model.layers.3.mlp.down_proj.weight") == "Q4_K"
    assert tied.wanted_qtype("model.embed_tokens.weight") == "Q8_0"
    assert tied.wanted_qtype("lm_head.weight") is None  # a tied model's repeated lm_head is never used
    for kept in (
        "model.norm.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.bias",
    ):
        assert tied.wanted_qtype(kept) is None
    untied_without_head = CheckpointQuantizer(
        "q4_0", tiny_config(tie_word_embeddings=False), ["model.embed_tokens.weight"]
    )
    assert untied_without_head.wanted_qtype("model.embed_tokens.weight") == "Q8_0"  # it serves as lm_head


# --- refusals ------------------------------------------------------------------------------------------------


def test_unknown_quantization_is_refused() -> None:
    with pytest.raises(ValueError, match="quantization must be one of q8_0, q4_0, q4_k, got 'q5_0'"):
        LoadConfig("model", quantization="q5_0")
    assert LoadConfig("model", quantization="Q8_0").quantization == "q8_0"
    assert LoadConfig("model", weight_format="packed", quantization="q4_k").quantization == "q4_k"


@pytest.mark.parametrize("weight_format", ["fp32", "bf16"])
def test_quantization_needs_packed_weights(weight_format: str) -> None:
    with pytest.raises(ValueError, match=f"cannot be combined with weight_format '{weight_format}'"):
        LoadConfig("model", weight_format=weight_format, quantization="q4_0")


def test_gguf_input_is_refused_as_already_quantized(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="a GGUF file is already quantized"):
        load_model(LoadConfig(quantization="q4_k"))  # the embedded default model is a GGUF
    from ember.models.default_model import default_gguf_path

    folder = tmp_path / "gguf-folder"
    folder.mkdir()
    (folder / "model.gguf").symlink_to(default_gguf_path())
    with pytest.raises(ModelLoadError, match="already quantized"):
        load_model(LoadConfig(str(folder), quantization="q8_0"))


def test_packed_without_quantization_still_needs_a_gguf(folder: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"or a quantization \(q8_0, q4_0, q4_k\)"):
        load_model(LoadConfig(str(folder), weight_format="packed"))


# --- the command line ----------------------------------------------------------------------------------------


def test_flag_parses_for_serve_and_bench() -> None:
    parser = build_parser()
    for command in ("serve", "bench"):
        assert parser.parse_args([command]).quantization is None
        assert parser.parse_args([command, "--quantization", "Q4_K"]).quantization == "q4_k"
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--quantization", "q6_k"])
    assert tuple(QUANTIZATIONS) == ("q8_0", "q4_0", "q4_k")


def test_bench_quantizes_the_model_it_measures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stock = write_tiny_hf_folder(tmp_path / "bench-model", max_position_embeddings=4096)
    args = ["bench", "--model", str(stock), "--quantization", "q4_0", "--threads", "1"]
    assert (
        main([*args, "--streams", "1", "--new-tokens", "2", "--peers", "", "--contexts", "", "--no-arrivals"])
        == 0
    )
    header = capsys.readouterr().out.splitlines()[0]
    assert "(safetensors f32 -> q4_0: 14 Q4_0 + 1 Q8_0 matrices) as packed" in header


def test_serve_quantizes_and_logs_what_it_applied(folder: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "ember.cli", "serve", "--model", str(folder), "--quantization", "q8_0"]
    command += ["--port", str(port), "--threads", "1", "--kv-cache-gib", "0.05", "--no-fine-tuning"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_healthy(server, f"http://127.0.0.1:{port}", log, timeout_s=120)
            body = {"model": "tiny-256", "prompt": "Hello", "max_tokens": 3}
            reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60)
            assert reply.status_code == 200, reply.text
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=60) in (0, -signal.SIGTERM)
        finally:
            if server.poll() is None:
                server.kill()
    assert "(safetensors, f32 -> q8_0: 15 Q8_0 matrices) served as packed weights" in log.read_text()


@pytest.mark.parametrize("variant", ["qwen2", "qwen3", "llama_attention_bias"])
def test_biases_and_qk_norms_stay_fp32_and_logits_follow_transformers(
    make_hf_model: Callable[..., nn.Module], tmp_path: Path, variant: str
) -> None:
    """Qwen2's q/k/v biases, Qwen3's q/k norms and untied lm_head, Llama's o_proj bias, through q8_0."""
    hf = make_hf_model(variant, seed=31)
    checkpoint = load_hf_folder(str(save_checkpoint(hf, tmp_path)), "q8_0")
    for name, weight in checkpoint.weights.items():  # matrices packed; biases and norms (1-D) stay fp32
        assert isinstance(weight, PackedWeight) == (len(weight.shape) == 2), name
    quantized = DecoderModel(checkpoint.config)
    quantized.load_weights(checkpoint.weights)
    # The same numbers held dense: the packed path computes exactly x @ dequantize(W).T + b.
    dense = DecoderModel(checkpoint.config)
    dense.load_weights(
        {n: w.dequantize() if isinstance(w, PackedWeight) else w for n, w in checkpoint.weights.items()}
    )
    ours = logits_of(quantized, PROMPTS)
    torch.testing.assert_close(ours, logits_of(dense, PROMPTS), rtol=1e-4, atol=1e-4)
    # And close to transformers' fp32 model: measured 1.9-2.4% relative error, top-1 kept at 13
    # or 14 of the 14 positions.
    reference = reference_logits(hf, PROMPTS)
    assert float((ours - reference).norm() / reference.norm()) < 0.04
    assert float((ours.argmax(-1) == reference.argmax(-1)).float().mean()) >= 0.85
