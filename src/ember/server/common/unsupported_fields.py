"""The request fields other APIs define for ember's routes that ember does not implement, per route: each is
refused with a 400 naming it unless its value asks for nothing (ember.server.common.field_policy).

Checked against: OpenAI's and Anthropic's Python SDKs (their create params), Fireworks' SDK (fireworks-ai 1.2),
vLLM's OpenAI server protocol and llama.cpp's server README. Fields ember honours, under their own name or as an
alias, are declared on the request models instead (server/openai/protocol.py, server/anthropic/protocol.py).
"""

from __future__ import annotations

from ember.server.common.field_policy import KnownField

VLLM = "vLLM"
LLAMA_CPP = "llama.cpp"
OPENAI = "OpenAI"
FIREWORKS = "Fireworks"
ANTHROPIC = "Anthropic"


def _llama_cpp_sampling() -> dict[str, KnownField]:
    """llama.cpp's samplers and server options ember does not have; the values its own web UI sends by default
    are the off ones, and a sampler's parameters are inert while the sampler itself is off."""
    return {
        "mirostat": KnownField(LLAMA_CPP, (None, 0)),
        "mirostat_tau": KnownField(LLAMA_CPP, gate="mirostat"),
        "mirostat_eta": KnownField(LLAMA_CPP, gate="mirostat"),
        "dynatemp_range": KnownField(LLAMA_CPP, (None, 0)),
        "dynatemp_exponent": KnownField(LLAMA_CPP, gate="dynatemp_range"),
        "xtc_probability": KnownField(LLAMA_CPP, (None, 0)),
        "xtc_threshold": KnownField(LLAMA_CPP, gate="xtc_probability"),
        "dry_multiplier": KnownField(LLAMA_CPP, (None, 0)),
        "dry_base": KnownField(LLAMA_CPP, gate="dry_multiplier"),
        "dry_allowed_length": KnownField(LLAMA_CPP, gate="dry_multiplier"),
        "dry_penalty_last_n": KnownField(LLAMA_CPP, gate="dry_multiplier"),
        "dry_sequence_breakers": KnownField(LLAMA_CPP, gate="dry_multiplier"),
        # llama.cpp's repeat penalty looks at the last repeat_last_n tokens; ember's repetition_penalty at all.
        "repeat_penalty": KnownField(
            LLAMA_CPP, (None, 1.0), instead="repetition_penalty penalizes every prompt and output token"
        ),
        "repeat_last_n": KnownField(LLAMA_CPP, gate="repeat_penalty"),
        "penalize_nl": KnownField(LLAMA_CPP, gate="repeat_penalty"),
        "n_probs": KnownField(LLAMA_CPP, (None, 0), instead="send logprobs (and top_logprobs on chat)"),
        "post_sampling_probs": KnownField(LLAMA_CPP, (None, False)),
        "min_keep": KnownField(LLAMA_CPP, (None, 0)),
        "tfs_z": KnownField(LLAMA_CPP, (None, 1.0)),
        "top_n_sigma": KnownField(LLAMA_CPP, (None, -1)),
        "samplers": KnownField(LLAMA_CPP, instead="ember applies its samplers in one fixed order"),
        "cache_prompt": KnownField(LLAMA_CPP, (None, True)),  # ember always reuses cached prefixes
        "id_slot": KnownField(LLAMA_CPP, (None, -1)),
        "n_keep": KnownField(LLAMA_CPP, (None, 0)),
        "n_indent": KnownField(LLAMA_CPP, (None, 0)),
        "t_max_predict_ms": KnownField(LLAMA_CPP, (None, 0)),
        "timings_per_token": KnownField(LLAMA_CPP, (None, False)),
        "return_tokens": KnownField(LLAMA_CPP, (None, False), instead="send return_token_ids: true"),
        "response_fields": KnownField(LLAMA_CPP),
        "lora": KnownField(LLAMA_CPP, (None, []), instead="an adapter is served as its own model name"),
        "grammar_lazy": KnownField(LLAMA_CPP, (None, False)),
        "grammar_triggers": KnownField(LLAMA_CPP, (None, [])),
        "preserved_tokens": KnownField(LLAMA_CPP, (None, [])),
    }


def _vllm_sampling(add_special_tokens: bool) -> dict[str, KnownField]:
    """vLLM's extra sampling and serving fields ember does not have (chat and completions alike)."""
    return {
        "use_beam_search": KnownField(VLLM, (None, False)),
        "length_penalty": KnownField(VLLM, gate="use_beam_search"),
        "allowed_token_ids": KnownField(VLLM, (None,), instead="logit_bias can favour tokens"),
        "bad_words": KnownField(VLLM, (None, [])),
        "spaces_between_special_tokens": KnownField(VLLM, (None, True)),
        "truncate_prompt_tokens": KnownField(VLLM),
        "add_special_tokens": KnownField(VLLM, (None, add_special_tokens)),
        "priority": KnownField(VLLM, (None, 0)),
        "request_id": KnownField(VLLM, instead="send the x-request-id header"),
        "logits_processors": KnownField(VLLM),
        "return_tokens_as_token_ids": KnownField(VLLM, (None, False)),
        "kv_transfer_params": KnownField(VLLM),
        "vllm_xargs": KnownField(VLLM),
        # ember's only backend is llguidance (vLLM's "guidance"); naming it, or leaving the choice, is honoured.
        "guided_decoding_backend": KnownField(VLLM, (None, "auto", "guidance", "llguidance")),
        "guided_whitespace_pattern": KnownField(VLLM),
        "structural_tag": KnownField(VLLM),
        "prompt_embeds": KnownField(VLLM),
    }


def _fireworks_sampling() -> dict[str, KnownField]:
    return {
        "mirostat_lr": KnownField(FIREWORKS),
        "mirostat_target": KnownField(FIREWORKS),
        "prompt_truncate_len": KnownField(FIREWORKS),
        "reasoning_history": KnownField(FIREWORKS),
        "safe_tokenization": KnownField(FIREWORKS, (None, False)),
        "speculation": KnownField(FIREWORKS, instead="send prediction (Predicted Outputs) or prompt_lookup"),
    }


def _openai_service() -> dict[str, KnownField]:
    """OpenAI's service options that a local server answers with its one way of working."""
    return {
        "service_tier": KnownField(OPENAI, (None, "auto", "default")),
        "store": KnownField(OPENAI, (None, False)),
    }


def completions_fields() -> dict[str, KnownField]:
    return {
        **_vllm_sampling(add_special_tokens=True),
        **_llama_cpp_sampling(),
        **_fireworks_sampling(),
        **_openai_service(),
        "images": KnownField(FIREWORKS, (None, [])),
        "reasoning_effort": KnownField(
            FIREWORKS, instead="reasoning is a chat feature: use /v1/chat/completions"
        ),
        "thinking": KnownField(FIREWORKS, instead="reasoning is a chat feature: use /v1/chat/completions"),
    }


def chat_fields() -> dict[str, KnownField]:
    return {
        **_vllm_sampling(add_special_tokens=False),
        **_llama_cpp_sampling(),
        **_fireworks_sampling(),
        **_openai_service(),
        "audio": KnownField(OPENAI),
        "modalities": KnownField(OPENAI, (None, ["text"])),
        "moderation": KnownField(OPENAI),
        "prompt_cache_retention": KnownField(OPENAI, (None, "in_memory")),
        "prompt_cache_options": KnownField(OPENAI),
        "verbosity": KnownField(OPENAI, (None, "medium")),
        "web_search_options": KnownField(OPENAI),
        "documents": KnownField(VLLM),
        "chat_template": KnownField(VLLM, instead="the model's own chat template is always used"),
        "mm_processor_kwargs": KnownField(VLLM),
        "media_io_kwargs": KnownField(VLLM),
        "best_of": KnownField(VLLM, (None, 1), instead="best_of is a /v1/completions parameter"),
        "echo_last": KnownField(FIREWORKS, instead="echo_last is a /v1/completions parameter"),
        "reasoning_format": KnownField(LLAMA_CPP, (None, "auto", "deepseek")),  # ember splits reasoning off
    }


def messages_fields() -> dict[str, KnownField]:
    return {
        "container": KnownField(ANTHROPIC),
        "mcp_servers": KnownField(ANTHROPIC, (None, [])),
        "context_management": KnownField(ANTHROPIC),
        "inference_geo": KnownField(ANTHROPIC),
        "service_tier": KnownField(ANTHROPIC, (None, "auto", "standard_only")),
        "speed": KnownField(ANTHROPIC, (None, "standard")),
        "diagnostics": KnownField(ANTHROPIC),
        "user_profile_id": KnownField(ANTHROPIC),
        "workspace_id": KnownField(ANTHROPIC),
    }


def embeddings_fields() -> dict[str, KnownField]:
    return {
        "truncate_prompt_tokens": KnownField(VLLM),
        "add_special_tokens": KnownField(VLLM, (None, True)),
        "priority": KnownField(VLLM, (None, 0)),
        "normalize": KnownField(VLLM, (None, True)),  # ember's embeddings are unit length
        "embed_dtype": KnownField(VLLM, (None, "float32")),
        "additional_data": KnownField(VLLM),
        "request_id": KnownField(VLLM, instead="send the x-request-id header"),
        "mm_processor_kwargs": KnownField(VLLM),
        "prompt_template": KnownField(FIREWORKS),
        "return_logits": KnownField(FIREWORKS),
    }
