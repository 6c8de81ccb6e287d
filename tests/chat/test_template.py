"""The chat template renderer matches transformers' apply_chat_template on real templates."""

from __future__ import annotations

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from ember.chat.template import ChatTemplate, ChatTemplateError
from ember.engine.testing import default_tokenizer_and_template

# A template in the style of Qwen2.5's: tools rendered with tojson, raise_exception, loop controls, strftime_now.
TOOLS_TEMPLATE = """{%- if tools %}<|im_start|>system
{{ messages[0]['content'] if messages[0]['role'] == 'system' else 'You are helpful.' }}
# Tools
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}
  {%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}
    {{- raise_exception('unknown role ' + message['role']) }}
  {%- endif %}
  {%- if message['role'] == 'system' and tools %}{% continue %}{% endif %}
  {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{% endif %}
{{- bos_token if false else '' }}"""

MESSAGES = [
    {"role": "system", "content": "Be brief & <precise>."},
    {"role": "user", "content": "Hi \u00e9t\u00e9 \u2603"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Weather?"},
]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather <now>", "parameters": {"type": "object"}},
    }
]


def smollm2_template() -> str:
    template = default_tokenizer_and_template()[1]  # read from the default GGUF once per process
    assert template is not None
    return template


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_matches_transformers(add_generation_prompt: bool) -> None:
    source = smollm2_template()
    for messages in (MESSAGES, MESSAGES[1:2]):
        expected = render_jinja_template(
            [messages], chat_template=source, add_generation_prompt=add_generation_prompt
        )[0][0]
        got = ChatTemplate(source).render(messages, add_generation_prompt=add_generation_prompt)
        assert got == expected


def test_tools_template_matches_transformers_including_tojson_and_extra_kwargs() -> None:
    for kwargs in ({}, {"enable_thinking": False}):
        expected = render_jinja_template(
            [MESSAGES], tools=TOOLS, chat_template=TOOLS_TEMPLATE, add_generation_prompt=True, **kwargs
        )[0][0]
        got = ChatTemplate(TOOLS_TEMPLATE).render(MESSAGES, tools=TOOLS, **kwargs)
        assert got == expected
    assert "<now>" in got and "<think></think>" in got  # tojson does not HTML-escape


def test_content_parts_are_joined_into_a_string() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]
    template = ChatTemplate(smollm2_template())
    assert template.render(parts) == template.render([{"role": "user", "content": "Hello"}])


def test_non_text_parts_are_refused_by_name() -> None:
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(ChatTemplateError, match=r"messages\[0\].content.*image_url"):
        ChatTemplate(smollm2_template()).render(image)


def test_raise_exception_becomes_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="unknown role wizard"):
        ChatTemplate(TOOLS_TEMPLATE).render([{"role": "wizard", "content": "x"}])


def test_broken_templates_give_value_errors() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="failed on these messages|chat template error"):
        ChatTemplate("{{ messages[0]['content'] + 1 }}").render([{"role": "user", "content": "x"}])


def test_sandbox_blocks_attribute_escapes() -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").render([])


def test_bos_and_strftime_globals() -> None:
    template = ChatTemplate(
        "{{ bos_token }}{{ eos_token }}|{{ strftime_now('%Y') | length }}", bos_token="<s>", eos_token="</s>"
    )
    assert template.render([]) == "<s></s>|4"
