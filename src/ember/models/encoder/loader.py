"""From an encoder folder (config.json, safetensors, tokenizer.json, optional sentence-transformers modules) to
a ready EncoderModel in fp32 on the CPU."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from ember.models.encoder.bert import BertEncoder, hf_weight_name
from ember.models.encoder.bert_config import read_encoder_config
from ember.models.encoder.encoder_model import EncoderModel
from ember.models.encoder.sentence_modules import read_sentence_pipeline
from ember.models.errors import ModelLoadError


def encoder_names(folder: Path) -> tuple[str, tuple[str, ...]]:
    """(name, aliases) of a folder: a Hugging Face cache-style `org__name` folder is served as `name` and also
    answers to `org/name`, the id vLLM and sentence-transformers users send."""
    base = folder.name
    org, sep, name = base.partition("__")
    if sep and org and name:
        return name, (f"{org}/{name}",)
    return base, ()


def load_encoder(path: str | Path) -> EncoderModel:
    started = time.perf_counter()
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ModelLoadError(
            str(folder),
            "an embedding model must be a Hugging Face folder (config.json, "
            "model.safetensors, tokenizer.json)",
        )
    pipeline = read_sentence_pipeline(folder)
    source = pipeline.transformer_dir
    config = read_encoder_config(source)
    if config.num_labels > 1:
        raise ModelLoadError(
            str(source),
            f"a classifier with {config.num_labels} labels is not a reranker (a cross-encoder has 1)",
        )
    tokenizer_path = source / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as error:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
        raise ModelLoadError(str(tokenizer_path), f"cannot read the tokenizer: {error}") from None
    tokenizer.no_truncation()  # inputs over the limit are refused by the API, never cut silently
    tokenizer.no_padding()
    network = BertEncoder(config)
    _load_weights(network, source)
    network.eval().requires_grad_(False)
    limit = config.max_tokens
    max_tokens = min(pipeline.max_seq_length or limit, limit)
    name, aliases = encoder_names(folder)
    return EncoderModel(
        name=name,
        aliases=aliases,
        source_path=str(folder),
        network=network,
        tokenizer=tokenizer,
        pooling=pipeline.pooling,
        normalize=pipeline.normalize,
        max_input_tokens=max_tokens,
        load_seconds=time.perf_counter() - started,
    )


def _load_weights(network: BertEncoder, folder: Path) -> None:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(str(folder), "no .safetensors weights in the folder")
    tensors: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        for file in files:
            try:
                handle = stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
            except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
                raise ModelLoadError(str(file), f"cannot read the weights: {error}") from None
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                ours = hf_weight_name(key)
                if ours is not None:
                    tensors[ours] = handle.get_tensor(key).to(torch.float32)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if ".qkv.query." in name:
            parts = [tensors.get(name.replace(".query.", f".{p}.")) for p in ("query", "key", "value")]
            if any(p is None for p in parts):
                raise ModelLoadError(str(folder), f"{name}: the layer lacks its key or value weights")
            state[name.replace(".qkv.query.", ".qkv.")] = torch.cat(parts, dim=0)  # type: ignore[arg-type]
        elif ".qkv." not in name:
            state[name] = tensor
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ModelLoadError(
            str(folder), f"the weights lack {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "")
        )
    for name, tensor in state.items():
        if name in expected and tensor.shape != expected[name].shape:
            raise ModelLoadError(
                str(folder),
                f"{name} has shape {tuple(tensor.shape)}, the config implies {tuple(expected[name].shape)}",
            )
    network.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
