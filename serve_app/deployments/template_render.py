"""Chat-template rules shared by the model server and its render worker processes.

Which ``chat_template_kwargs`` a request may send: the variables the template itself reads
(``jinja2.meta.find_undeclared_variables`` on the parsed template, as transformers'
``_get_template_variables`` and vLLM's ``resolve_chat_template_kwargs`` do) plus
``DOCUMENTED_TEMPLATE_KWARGS``, less ``RESERVED_TEMPLATE_KWARGS`` (the renderer's own arguments
and the special tokens it fills in). vLLM drops the others silently; we answer 400 naming them.

``render_request_template`` runs in a worker process (``serve_app.workers``) so that a template
that runs too long can be killed; keep this module's imports light.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from serve_app.errors import ChatTemplateError

# Arguments of transformers' apply_chat_template / render_jinja_template (5.x) and the names the
# renderer passes to the template itself: a request must not override them.
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "conversation",
        "conversations",
        "messages",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "sanitize_control_tokens",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
        "add_special_tokens",
        # special tokens: the renderer passes the tokenizer's own
        "bos_token",
        "eos_token",
        "unk_token",
        "pad_token",
        "sep_token",
        "cls_token",
        "mask_token",
    }
)
# Accepted whether or not the template reads them: common switches that clients send to any model
# (Qwen3's and DeepSeek's thinking switch). A template that does not read one ignores it.
DOCUMENTED_TEMPLATE_KWARGS = frozenset({"enable_thinking", "thinking"})
# Template errors that mean "this template cannot render this request", not a server fault.
RENDER_ERRORS = (
    jinja2.TemplateError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    ArithmeticError,
    RecursionError,
)
MAX_ERROR_CHARS = 500


@contextlib.contextmanager
def template_errors(model_name: str) -> Iterator[None]:
    """Turn an error raised while parsing or rendering a chat template into a 400."""
    try:
        yield
    except RENDER_ERRORS as exc:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, jinja2.TemplateSyntaxError):
            detail = f"syntax error on line {exc.lineno}: {exc.message}"
        raise ChatTemplateError(
            f"the chat template of model {model_name!r} could not be rendered: {detail[:MAX_ERROR_CHARS]}",
            param="messages",
        ) from None


def template_variables(template: str) -> frozenset[str]:
    """Names a template reads but does not define; ``TemplateSyntaxError`` for a broken one."""
    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=None, strftime_now=None, namespace=None)
    # {% generation %} is transformers' own tag; treat it as a plain block for this parse.
    source = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)
    return frozenset(meta.find_undeclared_variables(env.parse(source))) - set(env.globals)


def accepted_kwargs(templates: Iterable[str], special_tokens: Iterable[str]) -> frozenset[str]:
    """The ``chat_template_kwargs`` keys a request may send for these templates."""
    read: set[str] = set()
    for template in templates:
        read |= template_variables(template)
    return frozenset((read | DOCUMENTED_TEMPLATE_KWARGS) - RESERVED_TEMPLATE_KWARGS - set(special_tokens))


def check_template_kwargs(
    kwargs: dict[str, Any], accepted: frozenset[str], special_tokens: Iterable[str]
) -> None:
    """400 naming the keys of ``chat_template_kwargs`` that are reserved or not read by the template."""
    reserved = sorted(set(kwargs) & (RESERVED_TEMPLATE_KWARGS | set(special_tokens)))
    if reserved:
        raise ChatTemplateError(
            f"chat_template_kwargs: {', '.join(reserved)} cannot be set by a request: the server sets "
            "these when it renders the chat template",
            param="chat_template_kwargs",
        )
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ChatTemplateError(
            f"chat_template_kwargs: {', '.join(unknown)} not used by this model's chat template; "
            f"accepted keys: {', '.join(sorted(accepted)) or 'none'}",
            param="chat_template_kwargs",
        )


def render_request_template(
    template: str,
    messages: list[dict[str, Any]],
    kwargs: dict[str, Any],
    special_tokens: dict[str, str],
    model_name: str,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Render a request-supplied template (in a worker process): check, render, return the text.

    Raises ``ChatTemplateError`` (400) for a syntax error, a kwarg the template does not read, or
    an error the template raises."""
    with template_errors(model_name):
        accepted = accepted_kwargs([template], special_tokens)
        check_template_kwargs(kwargs, accepted, special_tokens)
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=template,
            tools=tools,
            add_generation_prompt=True,
            **{**special_tokens, **kwargs},
        )
    return rendered[0]


def warm_up() -> None:
    """Import the renderer, so that a fresh worker's first render is not charged for it."""
    from transformers.utils.chat_template_utils import render_jinja_template

    render_jinja_template(conversations=[[{"role": "user", "content": "hi"}]], chat_template="{{ messages }}")
