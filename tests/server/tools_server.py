"""Live servers on tiny random models whose chat templates support tools (Qwen2.5 / Hermes style) and thinking
(Qwen3-Thinking / DeepSeek-R1 style: the prompt opens <think>, or closes an empty one when thinking is off).
A random model cannot call tools by itself; with tool_choice required the grammar makes it."""

from __future__ import annotations

import dataclasses

from live_server import RunningServer, start_server

from ember.engine.async_engine import AsyncEngine
from ember.engine.testing import tiny_engine_config, tiny_loaded_model
from ember.server.common.config import ServerConfig

# The tool parts of Qwen2.5's template, shortened: tools listed in the system turn, calls as <tool_call> blocks,
# tool results wrapped in <tool_response> inside a user turn.
_TOOLS_SYSTEM = """{%- if tools %}<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else 'You are a helpful assistant.' }}

# Tools

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}"""
# Past reasoning is rendered only by the thinking template: a template that shows <think> is one whose replies
# may think, so its forced outputs allow a reasoning section first.
_REASONING = """{% if message.reasoning_content %}<think>
{{ message.reasoning_content }}
</think>

{% endif %}"""
_TURNS = """{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
<|im_start|>{{ message.role }}
REASONING{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{%- if message.content %}
{{ message.content }}{% endif %}
{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}"""
HERMES_TEMPLATE = (
    _TOOLS_SYSTEM
    + _TURNS.replace("REASONING", "")
    + "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
THINKING_TEMPLATE = (
    _TOOLS_SYSTEM
    + _TURNS.replace("REASONING", _REASONING)
    + """{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% else %}<think>
{% endif %}{% endif %}"""
)


def start_template_server(name: str, chat_template: str, max_model_len: int = 1024) -> RunningServer:
    model = dataclasses.replace(tiny_loaded_model(), chat_template=chat_template, name=name)
    engine = AsyncEngine.from_loaded(model, tiny_engine_config(max_model_len=max_model_len))
    return start_server(engine, ServerConfig(model_name=name))
