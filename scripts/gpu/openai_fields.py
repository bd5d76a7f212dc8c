#!/usr/bin/env python3
"""Exercise the OpenAI fields the router honours, through the official ``openai`` client.

Engine-agnostic: point it at any running router (the CPU app or the GPU app) or at a bare
``vllm serve`` and one model it serves.

    python scripts/gpu/openai_fields.py --model qwen2.5-3b-fp8 --out tmp/openai_fields.json
    python scripts/gpu/openai_fields.py --base-url http://127.0.0.1:8000/v1 --model qwen2-demo \\
        --out tmp/fields.json --only logprobs,echo

Every response body and stream chunk is validated with the ``openai`` package's own pydantic
types (``ChatCompletion``, ``ChatCompletionChunk``, ``Completion``, ``Model``) via
``model_validate`` on the JSON as received: the client itself builds its objects without
validation. Each check prints one ``PASS``/``FAIL`` line; the summary (every check, its detail
and time) goes to ``--out`` as JSON. Exit status 1 if any check failed, 2 on a usage error.

The checks hold for any weights, random ones included: sampling is compared with itself (a seed
reproduces, ``top_k=1`` and ``min_p=1`` equal greedy), and tokens are forced with ``logit_bias``
where a check needs a known token. Structured outputs need the constrained text to close within
``--json-max-tokens``; a random-weight model that keeps emitting whitespace fails that check
with a message that says so. The ``tools`` checks need ``vllm serve --enable-auto-tool-choice
--tool-call-parser <name>`` (the two-turn check uses ``tool_choice: "auto"``); ``required`` and a
named function compare streamed and non-streamed arguments as JSON values, since bare vLLM
re-serialises ``required`` arguments with ``json.dumps``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "Name three colours."}]
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "green", "blue"]}},
    "required": ["ok", "colour"],
    "additionalProperties": False,
}
TOOL_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather forecast", "parameters": TOOL_SCHEMA},
    }
]
TOOL_MESSAGES = [{"role": "user", "content": "What is the weather in Paris for the next 2 days?"}]
# Single tokens that are special in common tokenizers (Qwen2, Llama 3, Llama 2 / Mistral).
SPECIAL_CANDIDATES = ("<|im_start|>", "<|endoftext|>", "<|begin_of_text|>", "<s>")


class CheckFailed(Exception):
    """A check's expectation did not hold."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class Result:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class Runner:
    """Runs named checks, prints one line each and keeps the results."""

    only: set[str] | None = None
    results: list[Result] = field(default_factory=list)

    def run(self, name: str, check: Callable[[], str | None]) -> None:
        if self.only and not any(part in name for part in self.only):
            return
        started = time.perf_counter()
        try:
            detail, ok = check() or "", True
        except Exception as error:  # a check's failure, whatever raised it, is reported and counted
            detail, ok = f"{type(error).__name__}: {error}", False
        result = Result(name, ok, detail, round(time.perf_counter() - started, 3))
        self.results.append(result)
        print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)

    def summary(self, base_url: str, model: str) -> dict[str, Any]:
        failed = [r.name for r in self.results if not r.ok]
        return {
            "base_url": base_url,
            "model": model,
            "passed": len(self.results) - len(failed),
            "failed": len(failed),
            "failed_checks": failed,
            "checks": [asdict(r) for r in self.results],
        }


# --- validation with the openai package's own types -------------------------------------------


def validated(kind: type, obj: Any) -> Any:
    """``kind.model_validate`` on the object's JSON as the server sent it."""
    return kind.model_validate(obj.to_dict())


def chat(client: Any, **kwargs: Any) -> Any:
    from openai.types.chat import ChatCompletion

    return validated(ChatCompletion, client.chat.completions.create(**kwargs))


def chat_stream(client: Any, **kwargs: Any) -> list[Any]:
    from openai.types.chat import ChatCompletionChunk

    kwargs.setdefault("stream_options", {"include_usage": True})
    return [validated(ChatCompletionChunk, c) for c in client.chat.completions.create(stream=True, **kwargs)]


def validated_completion(obj: Any) -> Any:
    """``Completion.model_validate``, allowing the two nulls OpenAI's own API sends and the SDK's
    type forbids: a streamed choice's ``finish_reason`` before its last chunk, and with ``echo``
    the first prompt token's ``token_logprobs``/``top_logprobs`` (nothing precedes it). Returns
    the object as sent."""
    from openai.types import Completion

    body = obj.to_dict()
    for choice in body["choices"]:
        choice["finish_reason"] = choice.get("finish_reason") or "length"
        logprobs = choice.get("logprobs")
        if logprobs and logprobs.get("token_logprobs") and logprobs["token_logprobs"][0] is None:
            expect(logprobs["top_logprobs"][0] is None, "first prompt token: top_logprobs not null")
            logprobs["token_logprobs"][0], logprobs["top_logprobs"][0] = 0.0, {}
    Completion.model_validate(body)
    return obj


def completion(client: Any, **kwargs: Any) -> Any:
    return validated_completion(client.completions.create(**kwargs))


def completion_stream(client: Any, **kwargs: Any) -> list[Any]:

    kwargs.setdefault("stream_options", {"include_usage": True})
    return [validated_completion(c) for c in client.completions.create(stream=True, **kwargs)]


def texts_by_index(chunks: Iterable[Any], chat_api: bool) -> dict[int, str]:
    """The streamed text of each choice index."""
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            piece = (choice.delta.content if chat_api else choice.text) or ""
            texts[choice.index] = texts.get(choice.index, "") + piece
    return texts


def stream_usage(chunks: list[Any]) -> Any:
    """The usage of the last chunk, which with include_usage has no choices."""
    expect(bool(chunks), "the stream was empty")
    last = chunks[-1]
    expect(last.usage is not None and not last.choices, "the last chunk is not a usage chunk")
    return last.usage


def finish_reasons(chunks: Iterable[Any]) -> dict[int, str]:
    return {c.index: c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason}


# --- the checks ---------------------------------------------------------------------------------


@dataclass
class Fields:
    """The checks for one model. ``http`` talks to the server root (``/tokenize``)."""

    client: Any
    http: Any
    model: str
    max_tokens: int
    json_max_tokens: int

    # -- models, tokenizer endpoints --

    def model_card(self) -> str:
        from openai import NotFoundError
        from openai.types import Model

        card = validated(Model, self.client.models.retrieve(self.model))
        expect(card.id == self.model and card.object == "model", f"GET /v1/models/{self.model} gave {card}")
        listed = [validated(Model, m).id for m in self.client.models.list()]
        expect(self.model in listed, f"{self.model} is not in /v1/models: {listed}")
        try:
            self.client.models.retrieve(self.model + "-no-such-model")
        except NotFoundError:
            return f"owned_by={card.owned_by}; unknown id -> 404"
        raise CheckFailed("an unknown model id did not answer 404")

    def tokenize(self, prompt: str, add_special_tokens: bool = False) -> list[int]:
        body = {"model": self.model, "prompt": prompt, "add_special_tokens": add_special_tokens}
        reply = self._post("/tokenize", body)
        expect(reply.get("count") == len(reply.get("tokens", ())), f"count != len(tokens): {reply}")
        expect(isinstance(reply.get("max_model_len"), int), f"no max_model_len: {reply}")
        return reply["tokens"]

    def detokenize(self, tokens: list[int]) -> str:
        reply = self._post("/detokenize", {"model": self.model, "tokens": tokens})
        expect(isinstance(reply.get("prompt"), str), f"no prompt in {reply}")
        return reply["prompt"]

    def tokenizer_endpoints(self) -> str:
        tokens = self.tokenize(PROMPT)
        expect(bool(tokens), "no tokens")
        text = self.detokenize(tokens)
        expect(text == PROMPT, f"detokenize(tokenize(x)) = {text!r}, not {PROMPT!r}")
        chat_body = {"model": self.model, "messages": MESSAGES, "add_generation_prompt": True}
        rendered = self._post("/tokenize", chat_body)
        expect(
            rendered.get("count", 0) > len(self.tokenize(MESSAGES[0]["content"])),
            "chat template added nothing",
        )
        return f"{len(tokens)} prompt tokens round-trip; chat template -> {rendered['count']} tokens"

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(path, json=body)
        expect(response.status_code == 200, f"POST {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    # -- n, seed, several prompts --

    def n_with_seed(self) -> str:
        kwargs = dict(
            model=self.model,
            messages=MESSAGES,
            n=3,
            seed=1234,
            temperature=1.0,
            max_tokens=self.max_tokens,
            extra_body={"ignore_eos": True},
        )
        first, again = chat(self.client, **kwargs), chat(self.client, **kwargs)
        expect(
            sorted(c.index for c in first.choices) == [0, 1, 2], f"indexes {[c.index for c in first.choices]}"
        )
        texts = {c.index: c.message.content for c in first.choices}
        expect(texts == {c.index: c.message.content for c in again.choices}, "the same seed gave other text")
        streamed = chat_stream(self.client, **kwargs)
        expect(texts_by_index(streamed, chat_api=True) == texts, "streamed n=3 differs from non-streamed")
        expect(sorted(finish_reasons(streamed)) == [0, 1, 2], "not every streamed choice finished")
        usage = stream_usage(streamed)
        expect(usage.completion_tokens == first.usage.completion_tokens, "streamed usage differs")
        # vLLM seeds choice i with seed + i: the same text three times means one seed for all.
        distinct = len(set(texts.values()))
        expect(distinct > 1, f"all three choices are the same text: {texts[0]!r}")
        return f"3 choices, reproducible, streamed equal; {distinct} distinct texts"

    def prompt_list(self) -> str:
        prompts = [PROMPT, "Once upon a time"]
        kwargs = dict(
            model=self.model, prompt=prompts, n=2, seed=7, temperature=1.0, max_tokens=self.max_tokens
        )
        reply = completion(self.client, **kwargs)
        expect(
            sorted(c.index for c in reply.choices) == [0, 1, 2, 3],
            f"indexes {[c.index for c in reply.choices]}",
        )
        single = completion(self.client, **{**kwargs, "prompt": prompts[0], "n": 1, "max_tokens": 1})
        both = completion(self.client, **{**kwargs, "n": 1, "max_tokens": 1})
        expect(both.usage.prompt_tokens > single.usage.prompt_tokens, "usage does not count both prompts")
        streamed = completion_stream(self.client, **kwargs)
        expect(sorted(texts_by_index(streamed, chat_api=False)) == [0, 1, 2, 3], "streamed indexes")
        expect(sorted(finish_reasons(streamed)) == [0, 1, 2, 3], "not every streamed choice finished")
        texts = {c.index: c.text for c in reply.choices}
        expect(texts_by_index(streamed, chat_api=False) == texts, "streamed text differs (same seed)")
        return "2 prompts x n=2 -> indexes 0-3, streamed equal"

    # -- logprobs --

    def chat_logprobs(self) -> str:
        kwargs = dict(
            model=self.model,
            messages=MESSAGES,
            logprobs=True,
            top_logprobs=5,
            temperature=0,
            max_tokens=self.max_tokens,
        )
        reply = chat(self.client, **kwargs)
        content = reply.choices[0].logprobs.content
        expect(
            len(content) == reply.usage.completion_tokens,
            f"{len(content)} logprobs entries for {reply.usage}",
        )
        for entry in content:
            check_top(entry.logprob, [(t.token, t.logprob) for t in entry.top_logprobs], 5)
            expect(
                entry.top_logprobs[0].logprob == max(t.logprob for t in entry.top_logprobs), "top not sorted"
            )
            # Greedy over the raw distribution picks the most likely token.
            expect(
                math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-3), "greedy not rank 1"
            )
        streamed = chat_stream(self.client, **kwargs)
        entries = [
            e for chunk in streamed for c in chunk.choices if c.logprobs for e in (c.logprobs.content or [])
        ]
        expect(
            len(entries) == stream_usage(streamed).completion_tokens, "streamed logprobs != completion tokens"
        )
        expect([e.logprob for e in entries] == [e.logprob for e in content], "streamed logprobs differ")
        return f"{len(content)} tokens x top 5, streamed equal"

    def completion_logprobs_echo(self) -> str:
        kwargs = dict(
            model=self.model, prompt=PROMPT, logprobs=3, echo=True, temperature=0, max_tokens=self.max_tokens
        )
        reply = completion(self.client, **kwargs)
        choice, usage = reply.choices[0], reply.usage
        expect(
            choice.text.startswith(PROMPT), f"echo: text does not start with the prompt: {choice.text[:60]!r}"
        )
        check_completion_logprobs(
            choice.logprobs, usage.prompt_tokens + usage.completion_tokens, 3, echo=True
        )
        streamed = completion_stream(self.client, **{**kwargs, "echo": False})
        tokens = [
            t for chunk in streamed for c in chunk.choices if c.logprobs for t in c.logprobs.tokens or []
        ]
        expect(
            len(tokens) == stream_usage(streamed).completion_tokens, "streamed logprobs != completion tokens"
        )
        return f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens scored"

    def echo_max_tokens_zero(self) -> str:
        reply = completion(self.client, model=self.model, prompt=PROMPT, echo=True, max_tokens=0, logprobs=1)
        choice, usage = reply.choices[0], reply.usage
        expect(choice.text == PROMPT, f"text {choice.text!r} is not the prompt")
        expect(usage.completion_tokens == 0, f"completion_tokens {usage.completion_tokens}")
        check_completion_logprobs(choice.logprobs, usage.prompt_tokens, 1, echo=True)
        return f"prompt scored: {usage.prompt_tokens} tokens, finish_reason {choice.finish_reason}"

    # -- sampling controls --

    def greedy_text(self, **extra: Any) -> str:
        body = {"ignore_eos": True, **extra}
        reply = completion(
            self.client, model=self.model, prompt=PROMPT, max_tokens=self.max_tokens, extra_body=body
        )
        return reply.choices[0].text

    def top_k_and_min_p(self) -> str:
        greedy = self.greedy_text(temperature=0)
        expect(self.greedy_text(temperature=1.0, top_k=1, seed=3) == greedy, "top_k=1 differs from greedy")
        expect(self.greedy_text(temperature=1.0, min_p=1.0, seed=3) == greedy, "min_p=1 differs from greedy")
        self.greedy_text(temperature=0.8, top_k=20, min_p=0.05, seed=3)
        return "top_k=1 and min_p=1 equal greedy; top_k=20 + min_p=0.05 accepted"

    def penalties(self) -> str:
        from openai import BadRequestError

        penalised = dict(presence_penalty=1.5, frequency_penalty=1.0)
        reply = chat(
            self.client,
            model=self.model,
            messages=MESSAGES,
            temperature=0,
            max_tokens=self.max_tokens,
            extra_body={"repetition_penalty": 1.3},
            **penalised,
        )
        expect(reply.usage.completion_tokens > 0, "no tokens")
        plain = self.greedy_text(temperature=0, repetition_penalty=1.0)
        heavy = self.greedy_text(
            temperature=0, repetition_penalty=2.0, presence_penalty=2.0, frequency_penalty=2.0
        )
        for bad in ({"presence_penalty": 2.5}, {"frequency_penalty": -3}, {"repetition_penalty": 0}):
            try:
                completion(self.client, model=self.model, prompt=PROMPT, max_tokens=1, extra_body=bad)
            except BadRequestError:
                continue
            raise CheckFailed(f"{bad} was not refused with 400")
        effect = "changed" if heavy != plain else "unchanged"
        return f"accepted; out-of-range refused; greedy text {effect} by penalties"

    def forced_token(self) -> int:
        """A plain token id to force with logit_bias: the last token of ' the'."""
        return self.tokenize(" the")[-1]

    def logit_bias(self) -> str:
        token = self.forced_token()
        reply = completion(
            self.client,
            model=self.model,
            prompt=PROMPT,
            temperature=0,
            max_tokens=4,
            logit_bias={str(token): 100},
            extra_body={"ignore_eos": True},
        )
        n = reply.usage.completion_tokens
        expect(reply.choices[0].text == self.detokenize([token] * n), f"text {reply.choices[0].text!r}")
        return f"+100 on token {token} -> {n} x that token"

    def stop_token_ids(self) -> str:
        token = self.forced_token()
        reply = completion(
            self.client,
            model=self.model,
            prompt=PROMPT,
            temperature=0,
            max_tokens=8,
            logit_bias={str(token): 100},
            extra_body={"stop_token_ids": [token]},
        )
        choice = reply.choices[0]
        expect(choice.finish_reason == "stop", f"finish_reason {choice.finish_reason}")
        expect(reply.usage.completion_tokens == 1, f"{reply.usage.completion_tokens} tokens")
        # vLLM leaves the stop token's text out unless include_stop_str_in_output
        # (vllm/v1/engine/detokenizer.py, IncrementalDetokenizer.update).
        expect(choice.text == "", f"text {choice.text!r}")
        return f"stopped at token {token} after 1 token"

    def min_tokens(self) -> str:
        token = self.forced_token()
        reply = completion(
            self.client,
            model=self.model,
            prompt=PROMPT,
            temperature=0,
            max_tokens=6,
            logit_bias={str(token): 100},
            extra_body={"stop_token_ids": [token], "min_tokens": 4},
        )
        # min_tokens masks the stop token for the first 4 tokens; the bias picks it right after.
        n = reply.usage.completion_tokens
        expect(
            n == 5 and reply.choices[0].finish_reason == "stop",
            f"{n} tokens, {reply.choices[0].finish_reason}",
        )
        return "stop token held back for 4 tokens, then stopped at the 5th"

    def skip_special_tokens(self) -> str:
        special = self.special_token()
        if special is None:
            completion(
                self.client,
                model=self.model,
                prompt=PROMPT,
                max_tokens=2,
                extra_body={"skip_special_tokens": False},
            )
            return f"accepted; none of {SPECIAL_CANDIDATES} is one token here, so nothing forced"
        token, text = special
        body = {"ignore_eos": True, "skip_special_tokens": False}
        kept = completion(
            self.client,
            model=self.model,
            prompt=PROMPT,
            temperature=0,
            max_tokens=2,
            logit_bias={str(token): 100},
            extra_body=body,
        )
        dropped = completion(
            self.client,
            model=self.model,
            prompt=PROMPT,
            temperature=0,
            max_tokens=2,
            logit_bias={str(token): 100},
            extra_body={**body, "skip_special_tokens": True},
        )
        expect(
            text in kept.choices[0].text,
            f"skip_special_tokens=false dropped {text}: {kept.choices[0].text!r}",
        )
        expect(text not in dropped.choices[0].text, f"skip_special_tokens=true kept {text}")
        return f"{text} (id {token}) kept with false, dropped with true"

    def special_token(self) -> tuple[int, str] | None:
        for text in SPECIAL_CANDIDATES:
            tokens = self.tokenize(text)
            if len(tokens) == 1:
                return tokens[0], text
        return None

    # -- structured outputs --

    def json_object(self) -> str:
        kwargs = dict(
            model=self.model,
            messages=MESSAGES,
            temperature=1.0,
            seed=3,
            max_tokens=self.json_max_tokens,
            response_format={"type": "json_object"},
        )
        value = self.structured_reply(chat(self.client, **kwargs).choices[0])
        expect(isinstance(value, dict), f"not an object: {value!r}")
        streamed = chat_stream(self.client, **kwargs)
        expect(json.loads(texts_by_index(streamed, chat_api=True)[0]) == value, "streamed JSON differs")
        return f"object with keys {sorted(value)[:5]}"

    def json_schema(self) -> str:
        import jsonschema

        response_format = {
            "type": "json_schema",
            "json_schema": {"name": "pick", "schema": SCHEMA, "strict": True},
        }
        kwargs = dict(
            model=self.model,
            messages=MESSAGES,
            temperature=1.0,
            seed=3,
            max_tokens=self.json_max_tokens,
            response_format=response_format,
        )
        value = self.structured_reply(chat(self.client, **kwargs).choices[0])
        jsonschema.validate(value, SCHEMA)
        streamed = chat_stream(self.client, **kwargs)
        streamed_value = json.loads(texts_by_index(streamed, chat_api=True)[0])
        jsonschema.validate(streamed_value, SCHEMA)
        return f"valid against the schema: {value}"

    # -- tool calls --

    def tool_kwargs(self, tool_choice: Any) -> dict[str, Any]:
        return dict(
            model=self.model,
            messages=TOOL_MESSAGES,
            tools=TOOLS,
            tool_choice=tool_choice,
            parallel_tool_calls=False,
            temperature=1.0,
            seed=3,
            max_tokens=self.json_max_tokens,
        )

    def tool_choice_checked(self, tool_choice: Any, finish: str) -> str:
        """Non-streamed and streamed: one schema-valid call, the same value both ways."""
        import jsonschema

        kwargs = self.tool_kwargs(tool_choice)
        calls, reason = tool_calls_of(self.client, False, **kwargs)
        expect(reason == finish, f"finish_reason {reason}, not {finish}")
        expect(len(calls) == 1 and calls[0][0] == "get_weather", f"calls {calls}")
        jsonschema.validate(json.loads(calls[0][1]), TOOL_SCHEMA)
        streamed, reason = tool_calls_of(self.client, True, **kwargs)
        expect(reason == finish, f"streamed finish_reason {reason}, not {finish}")
        expect(len(streamed) == 1, f"streamed calls {streamed}")
        expect(json.loads(streamed[0][1]) == json.loads(calls[0][1]), f"streamed {streamed} != {calls}")
        same = "identical text" if streamed[0][1] == calls[0][1] else "same value, different text"
        return f"{calls[0][1]} (streamed pieces: {same})"

    def tools_required(self) -> str:
        return self.tool_choice_checked("required", "tool_calls")

    def tools_named(self) -> str:
        return self.tool_choice_checked({"type": "function", "function": {"name": "get_weather"}}, "stop")

    def tools_two_turns(self) -> str:
        """Call (required), the tool's result, then the answer under auto (text or another call)."""
        first = chat(self.client, **self.tool_kwargs("required")).choices[0].message
        expect(bool(first.tool_calls), "no call in the first turn")
        call = first.tool_calls[0]
        messages = [
            *TOOL_MESSAGES,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ]
        kwargs = dict(model=self.model, messages=messages, tools=TOOLS, seed=3, max_tokens=self.max_tokens)
        answer = chat(self.client, **kwargs).choices[0]
        streamed = chat_stream(self.client, **kwargs)
        expect(bool(streamed), "no chunks")
        # A random-weight model may end the answer at once (an empty reply, finish_reason stop):
        # that is a valid answer. What must hold is the turn's shape: a finish reason OpenAI
        # defines, and tool calls exactly when finish_reason is tool_calls.
        reason = answer.finish_reason
        expect(reason in ("stop", "length", "tool_calls"), f"finish_reason {reason}")
        expect(
            bool(answer.message.tool_calls) == (answer.finish_reason == "tool_calls"),
            f"tool_calls {answer.message.tool_calls!r} with finish_reason {answer.finish_reason}",
        )
        return f"answer finish_reason {answer.finish_reason}: {(answer.message.content or '')[:40]!r}"

    def structured_reply(self, choice: Any) -> Any:
        text = choice.message.content or ""
        expect(
            choice.finish_reason == "stop",
            f"finish_reason {choice.finish_reason} after {len(text)} characters: the constrained text "
            f"did not close within {self.json_max_tokens} tokens "
            "(a random-weight model? raise --json-max-tokens)",
        )
        return json.loads(text)


def tool_calls_of(client: Any, stream: bool, **kwargs: Any) -> tuple[list[tuple[str, str]], str | None]:
    """([(name, arguments)], finish_reason) of choice 0, streamed pieces joined by index."""
    if not stream:
        choice = chat(client, **kwargs).choices[0]
        calls = choice.message.tool_calls or []
        expect(all(c.id and c.type == "function" for c in calls), "a tool call without id or type")
        return [(c.function.name, c.function.arguments) for c in calls], choice.finish_reason
    joined: dict[int, list[str]] = {}
    finish = None
    for chunk in chat_stream(client, **kwargs):
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or []:
                if piece.index not in joined:
                    expect(bool(piece.id and piece.function and piece.function.name), "first piece unnamed")
                    joined[piece.index] = [piece.function.name, ""]
                joined[piece.index][1] += (piece.function and piece.function.arguments) or ""
            finish = choice.finish_reason or finish
    return [(name, args) for name, args in (joined[i] for i in sorted(joined))], finish


def check_top(chosen_logprob: float, top: list[tuple[Any, float]], k: int) -> None:
    expect(len(top) == k, f"{len(top)} top entries, not {k}")
    expect(all(lp <= 1e-6 for _, lp in top) and chosen_logprob <= 1e-6, "a logprob above 0")
    expect(all(a[1] >= b[1] - 1e-6 for a, b in itertools.pairwise(top)), "top not in rank order")


def check_completion_logprobs(logprobs: Any, positions: int, k: int, echo: bool) -> None:
    """The legacy completions ``logprobs`` object: parallel lists, one entry a token."""
    expect(logprobs is not None, "no logprobs")
    lists = (logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, logprobs.text_offset)
    expect(
        all(len(x or ()) == positions for x in lists),
        f"lengths {[len(x or ()) for x in lists]} != {positions}",
    )
    first = 1 if echo else 0  # the first prompt token has no logprob
    if echo:
        expect(logprobs.token_logprobs[0] is None, "the first prompt token has a logprob")
    for chosen, top in zip(logprobs.token_logprobs[first:], logprobs.top_logprobs[first:], strict=True):
        expect(chosen is not None and chosen <= 1e-6, f"logprob {chosen}")
        # OpenAI: up to logprobs + 1 entries (the chosen token besides the k most likely).
        # Keyed by token text, so two ids that decode alike count once.
        expect(top is not None and 1 <= len(top) <= k + 1, f"{len(top or {})} top entries for k={k}")
    offsets = logprobs.text_offset
    expect(all(a <= b for a, b in itertools.pairwise(offsets)), "text_offset decreases")


CHECKS = (
    ("models.retrieve", "model_card"),
    ("tokenize+detokenize", "tokenizer_endpoints"),
    ("chat.n3.seed", "n_with_seed"),
    ("completions.prompt_list", "prompt_list"),
    ("chat.logprobs.top5", "chat_logprobs"),
    ("completions.logprobs3.echo", "completion_logprobs_echo"),
    ("completions.echo.max_tokens0", "echo_max_tokens_zero"),
    ("sampling.top_k.min_p", "top_k_and_min_p"),
    ("sampling.penalties", "penalties"),
    ("sampling.logit_bias", "logit_bias"),
    ("sampling.stop_token_ids", "stop_token_ids"),
    ("sampling.min_tokens", "min_tokens"),
    ("sampling.skip_special_tokens", "skip_special_tokens"),
    ("response_format.json_object", "json_object"),
    ("response_format.json_schema", "json_schema"),
    ("tools.required", "tools_required"),
    ("tools.named", "tools_named"),
    ("tools.two_turns", "tools_two_turns"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base-url", default="http://127.0.0.1:8000/v1", help="the OpenAI base URL (ends in /v1)"
    )
    parser.add_argument("--model", required=True, help="a served model name")
    parser.add_argument("--out", type=Path, required=True, help="where the summary JSON goes")
    parser.add_argument("--max-tokens", type=int, default=12, help="tokens per answer (default 12)")
    parser.add_argument("--json-max-tokens", type=int, default=512, help="tokens for structured outputs")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--only", help="comma-separated parts of check names to run (e.g. logprobs,echo)")
    args = parser.parse_args(argv)

    import httpx
    from openai import OpenAI

    base_url = args.base_url.rstrip("/")
    root = base_url.removesuffix("/v1")  # /tokenize and /detokenize live beside /v1, as in vLLM
    client = OpenAI(base_url=base_url, api_key="unused", timeout=args.timeout, max_retries=0)
    fields = Fields(
        client,
        httpx.Client(base_url=root, timeout=args.timeout),
        args.model,
        args.max_tokens,
        args.json_max_tokens,
    )
    runner = Runner(only={p.strip() for p in args.only.split(",")} if args.only else None)
    for name, method in CHECKS:
        runner.run(name, getattr(fields, method))
    summary = runner.summary(base_url, args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("passed", "failed", "failed_checks")}), f"-> {args.out}")
    return 1 if summary["failed"] or not runner.results else 0


if __name__ == "__main__":
    sys.exit(main())
