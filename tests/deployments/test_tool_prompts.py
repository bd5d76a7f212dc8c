"""Tools reach the chat template; a template without tool support is a 400 that says so."""

from __future__ import annotations

import json

import pytest

from serve_app.deployments.prompts import PromptRenderer
from serve_app.errors import ChatTemplateError
from serve_app.router.protocol import ChatCompletionRequest
from tests.conftest import make_checkpoint_module

PLAIN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PARAMS = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": PARAMS}}]


def chat_request(**fields):
    body = {"model": "m", "messages": [{"role": "user", "content": "Time?"}], "max_tokens": 4, **fields}
    return ChatCompletionRequest.model_validate(body).to_inference()


def renderer(template: str) -> PromptRenderer:
    return PromptRenderer(make_checkpoint_module.build_tokenizer(1024, template), "m", 2048)


def test_a_template_that_never_reads_tools_is_a_400_saying_so():
    with pytest.raises(ChatTemplateError) as info:
        renderer(PLAIN_TEMPLATE).prompt_ids(chat_request(tools=TOOLS))
    assert str(info.value) == (
        "model 'm' has a chat template without tool support (it never reads `tools`), so tools cannot "
        "be shown to the model; leave tools out, or give the checkpoint a chat template that renders them"
    )
    assert info.value.param == "tools"


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_demo_templates_render_tools_and_keep_plain_prompts(arch):
    tool_renderer = renderer(make_checkpoint_module.CHAT_TEMPLATES[arch])
    with_tools = tool_renderer.tokenizer.decode(tool_renderer.prompt_ids(chat_request(tools=TOOLS))[0])
    assert json.dumps(TOOLS[0]) in with_tools
    plain = chat_request()
    assert tool_renderer.prompt_ids(plain) == renderer(PLAIN_TEMPLATE).prompt_ids(plain)


def test_required_and_named_choices_become_vllms_json_schemas():
    required = chat_request(tools=TOOLS, tool_choice="required").sampling.structured
    assert required.kind == "json"
    assert json.loads(required.value) == {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "anyOf": [
                {
                    "properties": {"name": {"type": "string", "enum": ["get_time"]}, "parameters": PARAMS},
                    "required": ["name", "parameters"],
                }
            ],
        },
    }
    single = chat_request(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert json.loads(single.sampling.structured.value)["maxItems"] == 1
    named = chat_request(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert json.loads(named.sampling.structured.value) == PARAMS
    assert (named.tool_choice, named.tool_name) == ("function", "get_time")
    assert chat_request(tools=TOOLS).tool_choice == "auto"
    assert chat_request(tools=TOOLS).sampling.structured is None


def test_text_past_any_tokenization_of_the_context_is_refused_before_tokenizing():
    """Both character checks (the raw messages, and the rendered chat with tools) give the same
    context_length_exceeded wording, naming what to shorten."""
    from serve_app.errors import ContextLengthError

    prompts = renderer(PLAIN_TEMPLATE)
    limit = prompts.max_model_len * prompts.max_token_chars
    long_text = "x" * (limit + 1)
    with pytest.raises(ContextLengthError) as raw:
        prompts._check_chars(chat_request(messages=[{"role": "user", "content": long_text}]), None)
    at_least = -(-(limit + 1) // prompts.max_token_chars)
    assert raw.value.message == (
        f"This model's maximum context length is 2048 tokens. However, your request has {limit + 1} "
        f"characters of input, at least {at_least} tokens for this tokenizer. Please reduce the "
        "length of the input."
    )
    assert raw.value.param == "messages"
    with pytest.raises(ContextLengthError) as rendered:
        prompts._check_rendered_chars(long_text)
    assert rendered.value.message == (
        f"This model's maximum context length is 2048 tokens. However, your messages render to "
        f"{limit + 1} characters (tools included), at least {at_least} tokens for this tokenizer. "
        "Please reduce the length of the messages or tools."
    )
    prompts._check_rendered_chars("x" * limit)  # at the limit: accepted
