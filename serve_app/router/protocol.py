"""OpenAI request bodies, ordered as in the OpenAI API reference, and their conversion.

Every field of OpenAI's chat and completions references and of vLLM's extra sampling fields is
either honoured with vLLM's meaning or refused with 400 naming it (``REFUSED``); docs/openai-api.md
lists each. A field outside both lists is refused too (``extra="forbid"``): vLLM accepts and
logs unknown fields, but then a misspelt ``max_token`` silently gives a different answer.

Bounds are the engine's real limits, as vLLM's protocol models and ``SamplingParams`` check them
(vllm/entrypoints/openai/chat_completion/protocol.py, vllm/sampling_params.py).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.deployments.requests import SEED_MAX, SEED_MIN, InferenceRequest
from serve_app.engines.protocol import SamplingOptions, StructuredOutput
from serve_app.engines.schema_walk import MAX_SCHEMA_DEPTH, schema_nodes
from serve_app.errors import InvalidRequestError
from serve_app.router.tools import (
    AssistantToolCall,
    NamedToolChoice,
    Tool,
    ToolChoice,
    check_tool_choice,
    tool_structured,
)

MAX_N = 16  # choices per request; each is a sequence in the engine's batch
MAX_CHAT_TOP_LOGPROBS = 20  # OpenAI's chat limit, and vLLM's default max_logprobs
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's completions limit
MAX_STOP = 16

TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
StopStr = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: Literal[False] = False


class JsonSchema(_Strict):
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = False


MAX_CONSTRAINT_CHARS = 262_144  # a schema, regex or grammar: compiling is CPU time per request
MAX_CHOICES = 1024  # structured_outputs.choice: each alternative is compiled into the grammar
MAX_CHOICE_CHARS = 1024


def external_ref(schema: Any) -> str | None:
    """Where ``schema`` has a ``$ref`` outside itself (not ``#...``), or None.

    Neither xgrammar nor vLLM fetches such a reference: xgrammar logs a warning and leaves that
    part unconstrained, so the output would not follow the schema the client sent. Refused here,
    for both engines, instead. Nesting past ``MAX_SCHEMA_DEPTH`` raises InvalidRequestError
    (``engines/schema_walk.py``)."""
    for node, path in schema_nodes(schema):
        ref = node.get("$ref") if isinstance(node, dict) else None
        if isinstance(ref, str) and not ref.startswith("#"):
            return f"{path}.$ref = {ref[:200]!r}"
    return None


def _loads_or_none(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except RecursionError:
        raise InvalidRequestError(
            f"the JSON schema is nested more than {MAX_SCHEMA_DEPTH} levels deep", param=None
        ) from None
    except ValueError:
        return None  # the engine names what is wrong with it


def _check_refs(schema: Any, param: str) -> None:
    """400 naming ``param`` for a schema that is too large, too deep or refers outside itself."""
    try:
        if len(schema if isinstance(schema, str) else json.dumps(schema)) > MAX_CONSTRAINT_CHARS:
            raise InvalidRequestError(
                f"the JSON schema is longer than {MAX_CONSTRAINT_CHARS} characters", param=param
            )
        where = external_ref(_loads_or_none(schema))
    except InvalidRequestError as error:
        raise InvalidRequestError(error.message, param=param) from None
    if where:
        raise InvalidRequestError(
            f"the JSON schema refers outside itself ({where}); only references within the schema "
            "(#/...) are supported",
            param=param,
        )


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def json_schema_goes_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.json_schema is required when type is 'json_schema'")
        return self

    def structured(self) -> StructuredOutput | None:
        if self.type == "json_object":
            return StructuredOutput("json_object")
        if self.type == "json_schema" and self.json_schema is not None:
            _check_refs(self.json_schema.schema_, "response_format")
            schema = json.dumps(self.json_schema.schema_, separators=(",", ":"))
            return StructuredOutput("json", schema, strict=bool(self.json_schema.strict))
        return None


class StructuredOutputs(_Strict):
    """vLLM's ``structured_outputs`` request field: exactly one constraint."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = Field(default=None, max_length=MAX_CONSTRAINT_CHARS)
    choice: list[Annotated[str, Field(max_length=MAX_CHOICE_CHARS)]] | None = Field(
        default=None, min_length=1, max_length=MAX_CHOICES
    )
    grammar: str | None = Field(default=None, max_length=MAX_CONSTRAINT_CHARS)
    json_object: bool | None = None

    def structured(self) -> StructuredOutput:
        given = [
            name for name in ("json_", "regex", "choice", "grammar", "json_object") if getattr(self, name)
        ]
        if len(given) != 1:
            raise InvalidRequestError(
                "structured_outputs takes exactly one of json, regex, choice, grammar, json_object",
                param="structured_outputs",
            )
        param = "structured_outputs"
        if self.json_ is not None:
            _check_refs(self.json_, param)
            schema = self.json_ if isinstance(self.json_, str) else json.dumps(self.json_)
            return StructuredOutput("json", schema, param=param)
        if self.regex is not None:
            return StructuredOutput("regex", self.regex, param=param)
        if self.choice is not None:
            return StructuredOutput("choice", tuple(self.choice), param=param)
        if self.grammar is not None:
            return StructuredOutput("grammar", self.grammar, param=param)
        return StructuredOutput("json_object", param=param)


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    """OpenAI's ``image_url`` object. ``url``: a ``data:image/...;base64,`` URL, or http(s) where
    the model allows the host (deployments/media.py). ``detail`` is accepted and, as in vLLM,
    changes nothing: the checkpoint's image processor decides the resolution."""

    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[ContentPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    """One message; ``tool_calls`` only on assistant messages, ``tool_call_id`` only (and always)
    on tool messages. Content: a string, or text and (user messages) ``image_url`` parts."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[Part] | None = None
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None
    tool_call_id: str | None = None
    # OpenAI puts these on the assistant messages it returns, so clients replay them; null (what
    # this server returns) is accepted, a value is refused: no template here renders them.
    refusal: None = None
    annotations: None = None
    audio: None = None
    function_call: None = None

    @model_validator(mode="after")
    def tool_fields_fit_the_role(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"tool_calls is only allowed on assistant messages, not {self.role}")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs tool_call_id (the id of the call it answers)")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"tool_call_id is only allowed on tool messages, not {self.role}")
        if self.image_urls() and self.role != "user":
            raise ValueError(f"image_url parts are only allowed in user messages, not {self.role}")
        return self

    def image_urls(self) -> list[str]:
        """The URLs of this message's image parts, in order."""
        if not isinstance(self.content, list):
            return []
        return [part.image_url.url for part in self.content if isinstance(part, ImagePart)]

    def as_template_input(self) -> dict[str, Any]:
        """The message as transformers' chat templates take it (vLLM's conversation format):
        content joined to a string, ``developer`` as ``system`` (OpenAI's meaning), tool-call
        arguments as dicts. A message with images keeps its parts in order, as ``{"type": "text",
        "text"}`` and ``{"type": "image"}`` (vLLM's "openai" content format), so the template
        writes each image's placeholder where the image is."""
        content: Any = self.content
        if isinstance(content, list) and self.image_urls():
            content = [
                {"type": "image"} if isinstance(part, ImagePart) else {"type": "text", "text": part.text}
                for part in content
            ]
        elif isinstance(content, list):
            content = "".join(part.text for part in content if isinstance(part, ContentPart))
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": content or "",
        }
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [call.as_template_input() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


# Fields of OpenAI's or vLLM's request that this server does not implement: refused with 400
# when set to anything but the value that means "off". name -> (values that mean off, why).
_OFF: tuple[Any, ...] = (None,)
REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    # OpenAI
    "audio": (_OFF, "audio output is not supported"),
    "function_call": ((*_OFF, "none"), "deprecated function calling is not supported; use tool_choice"),
    "functions": (_OFF, "deprecated function calling is not supported; use tools"),
    "prediction": (_OFF, "predicted outputs are not supported"),
    "reasoning_effort": (_OFF, "reasoning_effort is not supported by these models"),
    "verbosity": (_OFF, "verbosity is not supported by these models"),
    "web_search_options": (_OFF, "web search is not supported"),
    "modalities": ((*_OFF, ("text",)), "only the text modality is supported"),
    "service_tier": ((*_OFF, "auto", "default"), "only the default service tier exists"),
    "store": ((*_OFF, False), "stored completions are not supported"),
    "suffix": ((*_OFF, ""), "suffix (insertion) is not supported"),
    "best_of": ((*_OFF, 1), "best_of is not supported by vLLM's V1 engine; use n"),
    # vLLM extensions
    "use_beam_search": ((*_OFF, False), "beam search is not supported"),
    "length_penalty": ((*_OFF, 1, 1.0), "length_penalty applies to beam search, which is not supported"),
    "bad_words": ((*_OFF, ()), "bad_words is not supported"),
    "spaces_between_special_tokens": ((*_OFF, True), "spaces_between_special_tokens=false is not supported"),
    "logits_processors": ((*_OFF, ()), "custom logits processors are not supported"),
    "documents": (_OFF, "documents (RAG templates) are not supported"),
    "mm_processor_kwargs": (
        _OFF,
        "mm_processor_kwargs is not supported: the checkpoint's preprocessor_config.json "
        "sets how images are processed",
    ),
    "priority": ((*_OFF, 0), "priority scheduling is not enabled"),
    "request_id": (_OFF, "request_id is assigned by the server"),
    "cache_salt": (_OFF, "cache_salt is not supported"),
    "kv_transfer_params": (_OFF, "disaggregated prefill is not supported"),
    "vllm_xargs": (_OFF, "vllm_xargs is not supported"),
    "return_token_ids": ((*_OFF, False), "return_token_ids is not supported; use /tokenize"),
    "prompt_embeds": (_OFF, "prompt embeddings are not supported"),
    "guided_json": (_OFF, "guided_* fields were replaced by structured_outputs in vLLM"),
    "guided_regex": (_OFF, "guided_* fields were replaced by structured_outputs in vLLM"),
    "guided_choice": (_OFF, "guided_* fields were replaced by structured_outputs in vLLM"),
    "guided_grammar": (_OFF, "guided_* fields were replaced by structured_outputs in vLLM"),
}
CHAT_ONLY_REFUSED = (
    "audio",
    "function_call",
    "functions",
    "prediction",
    "reasoning_effort",
    "verbosity",
    "web_search_options",
    "modalities",
    "store",
    "documents",
    "mm_processor_kwargs",
)
COMPLETION_ONLY_REFUSED = ("suffix", "best_of", "prompt_embeds")


def _is_off(value: Any, off: tuple[Any, ...]) -> bool:
    """True when ``value`` is one of ``off`` (``True`` is not ``1``; a list equals its tuple)."""
    if isinstance(value, list):
        value = tuple(value)
    return any(
        value == candidate and isinstance(value, bool) == isinstance(candidate, bool) for candidate in off
    )


class _SamplingFields(_Strict):
    """Fields shared by chat and completions (OpenAI order), then vLLM's extensions."""

    model: str = Field(min_length=1, max_length=256)
    frequency_penalty: float | None = Field(default=0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    n: int | None = Field(default=1, ge=1, le=MAX_N)
    presence_penalty: float | None = Field(default=0.0, ge=-2, le=2)
    response_format: ResponseFormat | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stop: StopStr | list[StopStr] | None = Field(default=None)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    user: str | None = None
    # --- vLLM extensions (vllm/entrypoints/openai/*/protocol.py) ---
    top_k: int | None = Field(default=None, ge=-1, le=2**31 - 1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=100)
    min_tokens: int = Field(default=0, ge=0, le=2**31 - 1)
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=1024)
    allowed_token_ids: list[TokenId] | None = Field(default=None, min_length=1)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_CHAT_TOP_LOGPROBS)
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1, le=2**31 - 1)
    add_special_tokens: bool | None = None
    return_tokens_as_token_ids: bool = False
    structured_outputs: StructuredOutputs | None = None
    # Refused fields (REFUSED): declared so that /openapi.json and the docs list them.
    best_of: Any = None
    use_beam_search: Any = None
    length_penalty: Any = None
    bad_words: Any = None
    spaces_between_special_tokens: Any = None
    logits_processors: Any = None
    priority: Any = None
    request_id: Any = None
    cache_salt: Any = None
    kv_transfer_params: Any = None
    vllm_xargs: Any = None
    return_token_ids: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None

    @field_validator("logit_bias")
    @classmethod
    def logit_bias_maps_token_ids_to_bounded_values(cls, value: dict[str, float] | None) -> Any:
        if not value:
            return value
        if len(value) > 1024:
            raise ValueError("logit_bias may hold at most 1024 tokens")
        for key, bias in value.items():
            if not key.isdigit() or int(key) > 2**31 - 1:
                raise ValueError(f"logit_bias keys must be token ids (non-negative integers), got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias} for token {key}")
        return value

    @model_validator(mode="before")
    @classmethod
    def refused_fields_keep_their_off_value(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            rule = REFUSED.get(name)
            if rule is not None and name in cls.model_fields and not _is_off(value, rule[0]):
                raise InvalidRequestError(f"{name}: {rule[1]}", param=name)
        return data

    @model_validator(mode="after")
    def options_fit_together(self) -> _SamplingFields:
        if (
            self.response_format is not None
            and self.response_format.type != "text"
            and self.structured_outputs
        ):
            raise InvalidRequestError(
                "send either response_format or structured_outputs, not both", param="structured_outputs"
            )
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidRequestError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})",
                param="min_tokens",
            )
        # vLLM's checks (vllm/entrypoints/openai/*/protocol.py check_logprobs, validate_stream_options)
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options can only be given when stream is true", param="stream_options"
            )
        if self.stream and self.prompt_logprobs is not None:
            raise InvalidRequestError(
                "prompt_logprobs are not available when stream is true", param="prompt_logprobs"
            )
        return self

    # --- conversion ---------------------------------------------------------------------------
    def _structured(self) -> StructuredOutput | None:
        if self.structured_outputs is not None:
            return self.structured_outputs.structured()
        return self.response_format.structured() if self.response_format else None

    def _sampling(
        self, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None
    ) -> SamplingOptions:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(stop) > MAX_STOP:
            raise InvalidRequestError(f"stop takes at most {MAX_STOP} strings", param="stop")
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=None if self.seed == -1 else self.seed,  # vLLM: -1 means no seed (SamplingParams)
            stop=stop,
            ignore_eos=self.ignore_eos,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            min_tokens=self.min_tokens,
            logit_bias=tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items()),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            allowed_token_ids=tuple(self.allowed_token_ids) if self.allowed_token_ids else None,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            structured=self._structured(),
        )

    def _common(
        self,
        max_tokens: int | None,
        logprobs: int | None,
        prompt_logprobs: int | None,
        received_at: float | None,
    ) -> dict:
        now = time.time()
        return {
            "request_id": uuid.uuid4().hex,
            "model": self.model,
            "created": int(now),
            "received_at": now if received_at is None else received_at,
            # Without max_tokens the model server fills the context; 16 only until it knows the prompt.
            "sampling": self._sampling(16 if max_tokens is None else max_tokens, logprobs, prompt_logprobs),
            "max_tokens_given": max_tokens is not None,
            "n": self.n or 1,
            "stream": bool(self.stream),
            "include_usage": bool(self.stream_options and self.stream_options.include_usage),
            "add_special_tokens": self.add_special_tokens,
            "truncate_prompt_tokens": self.truncate_prompt_tokens,
            "return_tokens_as_token_ids": self.return_tokens_as_token_ids,
        }


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions (https://platform.openai.com/docs/api-reference/chat/create)."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = False
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    tools: list[Tool] | None = None  # [] means no tools
    tool_choice: ToolChoice | None = None  # default: "auto" with tools, "none" without
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_CHAT_TOP_LOGPROBS)
    # --- vLLM extensions ---
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    chat_template: str | None = None  # vLLM's field; 400 unless the model allows request templates
    # Refused (REFUSED)
    audio: Any = None
    function_call: Any = None
    functions: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    modalities: Any = None
    service_tier: Any = None
    store: Any = None
    documents: Any = None
    mm_processor_kwargs: Any = None
    echo: Any = None

    @model_validator(mode="after")
    def chat_options_fit_together(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true", param="top_logprobs")
        if self.add_generation_prompt and self.continue_final_message:
            raise InvalidRequestError(
                "continue_final_message and add_generation_prompt cannot both be true",
                param="continue_final_message",
            )
        if self.echo:
            raise InvalidRequestError("echo is not supported for chat completions", param="echo")
        check_tool_choice(self.tools, self.tool_choice)
        if self._tool_choice() in ("required", "function") and (
            self.structured_outputs or (self.response_format and self.response_format.type != "text")
        ):
            raise InvalidRequestError(
                "tool_choice 'required' or a named function constrains the output to tool calls; "
                "it cannot be combined with response_format or structured_outputs",
                param="tool_choice",
            )
        return self

    def _tool_choice(self) -> str:
        """none, auto, required, or function (a named one); vLLM's default is auto with tools."""
        if not self.tools:
            return "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return "function"
        return self.tool_choice or "auto"

    def _structured(self) -> StructuredOutput | None:
        if self.tools and self.tool_choice is not None:
            parallel = self.parallel_tool_calls is not False
            constraint = tool_structured(self.tools, self.tool_choice, parallel)
            if constraint is not None:
                return constraint
        return super()._structured()

    def to_inference(self, received_at: float | None = None) -> InferenceRequest:
        """The model server's request; ``received_at``: time.time() when the router's handler began
        (router_to_replica and dispatch count from it), else now."""
        max_tokens = self.max_completion_tokens if self.max_tokens is None else self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        named = self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None
        return InferenceRequest(
            kind="chat",
            messages=[message.as_template_input() for message in self.messages],
            images=tuple(url for message in self.messages for url in message.image_urls()),
            tools=[tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None,
            tool_choice=self._tool_choice(),
            tool_name=named,
            parallel_tool_calls=self.parallel_tool_calls is not False,
            chat_template_kwargs=dict(self.chat_template_kwargs or {}),
            add_generation_prompt=self.add_generation_prompt,
            continue_final_message=self.continue_final_message,
            chat_template=self.chat_template,
            **self._common(max_tokens, logprobs, self.prompt_logprobs, received_at),
        )


PromptInput = str | list[TokenId] | list[str] | list[list[TokenId]]


class CompletionRequest(_SamplingFields):
    """POST /v1/completions (https://platform.openai.com/docs/api-reference/completions/create)."""

    prompt: PromptInput
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    max_tokens: int | None = Field(default=16, ge=0, le=2**31 - 1)  # OpenAI's completions default
    suffix: Any = None
    service_tier: Any = None
    prompt_embeds: Any = None

    @field_validator("prompt", mode="wrap")
    @classmethod
    def prompt_has_one_of_four_shapes(cls, value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValueError:
            # pydantic would list one failure per union member; one sentence says it better.
            raise ValueError(
                "must be a string, a list of strings, a list of token ids or a list of token-id lists"
            ) from None

    @model_validator(mode="after")
    def zero_max_tokens_only_with_echo(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens may be 0 only with echo (to score the prompt)")
        return self

    def prompts(self) -> tuple[str | list[int], ...]:
        prompt = self.prompt
        if isinstance(prompt, str):
            return (prompt,)
        if not prompt:
            raise InvalidRequestError("prompt is empty", param="prompt")
        if all(isinstance(p, int) for p in prompt):
            return (list(prompt),)
        for index, item in enumerate(prompt):
            if not item and item != "":
                raise InvalidRequestError(f"prompt[{index}] is empty", param="prompt")
        return tuple(p if isinstance(p, str) else list(p) for p in prompt)

    def to_inference(self, received_at: float | None = None) -> InferenceRequest:
        """The model server's request; ``received_at``: time.time() when the router's handler began
        (router_to_replica and dispatch count from it), else now."""
        prompts = self.prompts()
        if len(prompts) * (self.n or 1) > MAX_N * 4:
            raise InvalidRequestError(
                f"{len(prompts)} prompts x n={self.n} is {len(prompts) * (self.n or 1)} choices; "
                f"at most {MAX_N * 4} per request",
                param="prompt",
            )
        prompt_logprobs = self.prompt_logprobs
        if self.echo and self.logprobs is not None and prompt_logprobs is None:
            prompt_logprobs = self.logprobs  # vLLM: echo with logprobs scores the prompt too
        return InferenceRequest(
            kind="completion",
            prompts=prompts,
            echo=bool(self.echo),
            **self._common(self.max_tokens, self.logprobs, prompt_logprobs, received_at),
        )


class TokenizeCompletionRequest(_Strict):
    """POST /tokenize with a prompt (vLLM's ``TokenizeCompletionRequest``)."""

    model: str = Field(min_length=1, max_length=256)
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(_Strict):
    """POST /tokenize with messages, rendered by the chat template (vLLM's ``TokenizeChatRequest``)."""

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    # As vLLM's TokenizeChatRequest: the tools the chat template renders, so the count matches
    # what a chat completion with the same tools sends the engine.
    tools: list[Tool] | None = None

    @model_validator(mode="after")
    def one_way_to_end(self) -> TokenizeChatRequest:
        if self.add_generation_prompt and self.continue_final_message:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        if any(message.image_urls() for message in self.messages):
            raise InvalidRequestError(
                "/tokenize does not take image_url parts; send the request to /v1/chat/completions, "
                "whose usage.prompt_tokens counts the image tokens",
                param="messages",
            )
        return self


class DetokenizeRequest(_Strict):
    """POST /detokenize (vLLM's ``DetokenizeRequest``)."""

    model: str = Field(min_length=1, max_length=256)
    tokens: list[TokenId] = Field(max_length=1_000_000)


def tokenize_model(document: Any) -> type[TokenizeChatRequest] | type[TokenizeCompletionRequest]:
    """vLLM's two /tokenize shapes: ``messages`` (rendered by the chat template) or a ``prompt``."""
    return (
        TokenizeChatRequest
        if isinstance(document, dict) and "messages" in document
        else TokenizeCompletionRequest
    )


def tokenize_job(body: TokenizeCompletionRequest | TokenizeChatRequest) -> dict[str, Any]:
    """The plain dict a model server's ``tokenize`` takes."""
    job: dict[str, Any] = {
        "add_special_tokens": body.add_special_tokens,
        "return_token_strs": body.return_token_strs,
    }
    if isinstance(body, TokenizeChatRequest):
        job.update(
            messages=[message.as_template_input() for message in body.messages],
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            chat_template_kwargs=dict(body.chat_template_kwargs or {}),
            tools=[tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None,
        )
    else:
        job["prompt"] = body.prompt
    return job
