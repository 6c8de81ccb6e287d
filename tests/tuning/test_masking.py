"""Loss masks from the base model's own chat template, checked token by token.

The reference for ChatML is transformers' `apply_chat_template(..., return_assistant_tokens_mask=True)` on the
same template with `{% generation %}` marks around what a reply generates: an independent implementation of
"which tokens did the assistant write"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tuning_helpers import good_row, write_jsonl

from ember.chat.template import ChatTemplate
from ember.engine.testing import default_tokenizer_and_template
from ember.tuning.batching import load_examples
from ember.tuning.masking import ConversationMasker, MaskingError
from ember.tuning.validation import ValidationOptions, validate_dataset

IM_END = 2

# SmolLM2's template with the reply (content + <|im_end|>) marked for transformers' assistant mask.
CHATML_WITH_GENERATION = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen3's habit in miniature: reasoning is shown only for assistant turns after the last user message.
THINKING_TEMPLATE = (
    "{% set ns = namespace(last_user=-1) %}"
    "{% for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}"
    "{% if m.role == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% if loop.index0 > ns.last_user and m.reasoning_content %}"
    "{{ '<think>\n' + m.reasoning_content + '\n</think>\n\n' }}"
    "{% endif %}"
    "{{ m.content + '<|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A template that renders tool calls and tool results, ChatML style.
TOOLS_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m.role + '\n' }}"
    "{% if m.content %}{{ m.content }}{% endif %}"
    "{% for call in m.tool_calls or [] %}"
    "{{ '<tool_call>' + call.function.name + ' ' + call.function.arguments + '</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def masker_for(source: str | None = None) -> ConversationMasker:
    tokenizer, default_template = default_tokenizer_and_template()
    template = ChatTemplate(source or default_template, bos_token="<|im_start|>", eos_token="<|im_end|>")
    return ConversationMasker(template, tokenizer, (IM_END,))


def encode(text: str) -> list[int]:
    tokenizer, _ = default_tokenizer_and_template()
    return tokenizer.encode(text)


def trained_ids(ids: list[int], weights: list[float]) -> list[int]:
    return [t for t, w in zip(ids, weights, strict=True) if w > 0]


CONVERSATION = {
    "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "I think Rome, but check.", "weight": 0},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes: Rome."},
    ]
}


def test_chatml_mask_matches_transformers_assistant_mask(smollm_tokenizer: Any) -> None:
    rows = [CONVERSATION, good_row("Hi", "Hello there! How can I help?")]
    for row in rows:
        tokens = masker_for(CHATML_WITH_GENERATION).tokenize_row(row)
        [example] = tokens.examples
        reference = smollm_tokenizer.apply_chat_template(
            [{k: v for k, v in m.items() if k != "weight"} for m in row["messages"]],
            chat_template=CHATML_WITH_GENERATION,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        assert example.input_ids == reference["input_ids"]
        # transformers marks every assistant reply; ours leaves the weight-0 one out.
        weight0 = [m["content"] + "<|im_end|>" for m in row["messages"] if m.get("weight", 1) == 0]
        expected_mask = list(reference["assistant_masks"])
        if weight0:
            skip = encode(weight0[0])
            for start in range(len(expected_mask)):
                if example.input_ids[start : start + len(skip)] == skip and expected_mask[start]:
                    expected_mask[start : start + len(skip)] = [0] * len(skip)
                    break
        assert [1 if w > 0 else 0 for w in example.loss_weights] == expected_mask


def test_default_template_trains_replies_and_end_of_turn_only() -> None:
    tokens = masker_for().tokenize_row(CONVERSATION)
    [example] = tokens.examples
    assert not tokens.split_per_turn
    assert trained_ids(example.input_ids, example.loss_weights) == (
        encode("Paris.") + [IM_END] + encode("Yes: Rome.") + [IM_END]
    )
    # The whole sequence is exactly the rendered conversation: nothing added, nothing lost.
    rendered = masker_for().template.render(CONVERSATION["messages"], add_generation_prompt=False)
    assert example.input_ids == encode(rendered)
    assert example.input_ids[-1] == encode("\n")[0] and example.loss_weights[-1] == 0  # after <|im_end|>
    assert tokens.dataset_tokens == tokens.tuned_tokens == len(example.input_ids)
    assert tokens.trained_tokens == len(encode("Paris.")) + len(encode("Yes: Rome.")) + 2


def test_default_system_prompt_of_the_template_is_context() -> None:
    [example] = masker_for().tokenize_row(good_row("Hi", "Hello!")).examples
    text = ChatTemplate(default_tokenizer_and_template()[1]).render(
        good_row("Hi", "Hello!")["messages"], add_generation_prompt=False
    )
    assert "You are a helpful AI assistant named SmolLM" in text
    assert trained_ids(example.input_ids, example.loss_weights) == encode("Hello!") + [IM_END]


def test_sample_weight_scales_every_trained_token() -> None:
    row = {**CONVERSATION, "weight": 0.25}
    [example] = masker_for().tokenize_row(row).examples
    assert {w for w in example.loss_weights if w > 0} == {0.25}
    assert masker_for().tokenize_row({**CONVERSATION, "weight": 0}).examples == []


def test_row_with_only_weight_zero_replies_gives_no_example() -> None:
    row = good_row()
    row["messages"][1]["weight"] = 0
    tokens = masker_for().tokenize_row(row)
    assert tokens.examples == [] and tokens.trained_tokens == 0 and tokens.dataset_tokens > 0


def test_thinking_template_splits_one_example_per_assistant_turn() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
            {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "6", "reasoning_content": "three and three"},
        ]
    }
    tokens = masker_for(THINKING_TEMPLATE).tokenize_row(row)
    assert tokens.split_per_turn
    first, second = tokens.examples
    assert trained_ids(first.input_ids, first.loss_weights) == (
        encode("<think>\ntwo and two\n</think>\n\n4") + [IM_END]
    )
    assert trained_ids(second.input_ids, second.loss_weights) == (
        encode("<think>\nthree and three\n</think>\n\n6") + [IM_END]
    )
    # In the second example the first turn is context, rendered as serving shows it: without its reasoning.
    assert second.input_ids == encode(
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n<think>\nthree and three\n</think>\n\n6"
        "<|im_end|>\n"
    )
    assert tokens.dataset_tokens == len(
        encode(masker_for(THINKING_TEMPLATE).template.render(row["messages"], add_generation_prompt=False))
    )
    assert tokens.tuned_tokens == first.num_tokens + second.num_tokens > tokens.dataset_tokens
    assert tokens.longest_example == second.num_tokens


def test_thinking_template_single_turn_is_not_split() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
        ]
    }
    tokens = masker_for(THINKING_TEMPLATE).tokenize_row(row)
    assert not tokens.split_per_turn and len(tokens.examples) == 1


def test_tool_calls_are_trained_and_tool_results_are_context() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "rain"},
            {"role": "assistant", "content": "It rains."},
        ]
    }
    [example] = masker_for(TOOLS_TEMPLATE).tokenize_row(row).examples
    assert trained_ids(example.input_ids, example.loss_weights) == (
        encode('<tool_call>weather {"city": "Oslo"}</tool_call>') + [IM_END] + encode("It rains.") + [IM_END]
    )


def test_template_that_drops_tool_calls_or_reasoning_is_an_error() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    with_content = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "y", "tool_calls": [call]},
        ]
    }
    with pytest.raises(MaskingError, match="does not render tool_calls"):
        masker_for().tokenize_row(with_content)
    null_content = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ]
    }
    with pytest.raises(MaskingError, match="cannot render"):
        masker_for().tokenize_row(null_content)
    reasoning = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "y", "reasoning_content": "z"},
        ]
    }
    with pytest.raises(MaskingError, match="does not render reasoning_content"):
        masker_for().tokenize_row(reasoning)


def test_count_tokens_feeds_dataset_validation(tmp_path: Path) -> None:
    masker = masker_for()
    rows = [CONVERSATION, good_row("Hi", "Hello!"), good_row("Bye", "Goodbye!")]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    report = validate_dataset(path, ValidationOptions(max_context_length=60), masker.count_tokens)
    counts = [masker.count_tokens(row) for row in rows]
    assert report.ok
    assert report.estimated_token_count == sum(total for total, _ in counts)
    assert report.trainable_token_count == sum(trained for _, trained in counts)
    assert report.rows_over_max_context == sum(total > 60 for total, _ in counts) == 1


def test_load_examples_drops_and_counts_too_long_examples(tmp_path: Path) -> None:
    rows = [CONVERSATION, good_row("Hi", "Hello!"), good_row("Bye", "Goodbye!")]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    loaded = load_examples(path, masker_for(), max_context_length=60)
    assert loaded.rows == 3 and loaded.dropped_too_long == 1
    assert [e.row_index for e in loaded.examples] == [1, 2]
    assert loaded.tuned_tokens == sum(e.num_tokens for e in loaded.examples)
    assert loaded.trained_tokens == sum(e.num_trained_tokens for e in loaded.examples)


def test_load_examples_names_the_line_of_a_row_that_cannot_render(tmp_path: Path) -> None:
    bad = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "y", "reasoning_content": "z"},
        ]
    }
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good_row(), bad]) + "\n", encoding="utf-8")
    with pytest.raises(MaskingError, match="line 2: .*reasoning_content"):
        load_examples(path, masker_for(), max_context_length=512)
