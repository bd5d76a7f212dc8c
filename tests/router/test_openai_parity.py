"""Sampling and output fields through a real Ray Serve app and the official openai client.

Every body and streamed chunk is validated with the openai package's own pydantic types.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from openai.types import Completion, CompletionChoice, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_choice import Logprobs

CHAT = [{"role": "user", "content": "Tell me a story about a fox."}]
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


def post(base: str, route: str, body: dict) -> dict:
    response = httpx.post(f"{base}{route}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def events(base: str, route: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{base}{route}", json={**body, "stream": True}, timeout=120) as response:
        assert response.status_code == 200, response.read()
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def chat(base: str, **fields) -> ChatCompletion:
    body = {"model": "qwen", "messages": CHAT, **fields}
    return ChatCompletion.model_validate(post(base, "/v1/chat/completions", body), strict=False)


def chat_chunks(base: str, **fields) -> list[ChatCompletionChunk]:
    body = {"model": "qwen", "messages": CHAT, **fields}
    return [ChatCompletionChunk.model_validate(e) for e in events(base, "/v1/chat/completions", body)]


def completion(base: str, **fields) -> Completion:
    body = {"model": "llama-tiny", **fields}
    return lenient_completion(post(base, "/v1/completions", body))


def lenient_completion(raw: dict) -> Completion:
    """Validate with the SDK's ``Completion``, which is stricter than OpenAI's own API on two points:
    a streamed choice's ``finish_reason`` is null until its last chunk, and with ``echo`` the
    prompt's first token has null ``token_logprobs``/``top_logprobs`` (nothing precedes it). Those
    nulls are checked, then stand in as values the type accepts, and everything else is validated.
    Returns the body as sent (nulls kept)."""
    body = json.loads(json.dumps(raw))
    for choice in body["choices"]:
        choice["finish_reason"] = choice["finish_reason"] or "length"
        logprobs = choice.get("logprobs")
        if logprobs and logprobs["token_logprobs"] and logprobs["token_logprobs"][0] is None:
            assert logprobs["top_logprobs"][0] is None
            logprobs["token_logprobs"][0], logprobs["top_logprobs"][0] = 0.0, {}
    Completion.model_validate(body)
    choices = [
        CompletionChoice.model_construct(
            **{**c, "logprobs": Logprobs.model_construct(**c["logprobs"]) if c.get("logprobs") else None}
        )
        for c in raw["choices"]
    ]
    return Completion.model_construct(**{**raw, "choices": choices})


def completion_chunks(base: str, **fields) -> list[Completion]:
    body = {"model": "llama-tiny", **fields}
    return [lenient_completion(e) for e in events(base, "/v1/completions", body)]


def texts_by_index(chunks, chat_kind: bool) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            piece = (choice.delta.content or "") if chat_kind else choice.text
            out[choice.index] = out.get(choice.index, "") + piece
    return out


# --- n -------------------------------------------------------------------------------------------


def test_n_choices_are_indexed_reproducible_with_a_seed_and_the_first_equals_n_1(two_model_app):
    fields = {"max_tokens": 8, "temperature": 1.0, "seed": 11, "ignore_eos": True}
    three = chat(two_model_app, n=3, **fields)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert chat(two_model_app, n=3, **fields).choices == three.choices
    assert chat(two_model_app, n=1, **fields).choices[0].message.content == three.choices[0].message.content
    assert len({c.message.content for c in three.choices}) > 1
    assert three.usage.completion_tokens == 24
    assert three.usage.prompt_tokens == chat(two_model_app, n=1, **fields).usage.prompt_tokens


def test_streamed_n_choices_equal_the_non_streamed_ones(two_model_app):
    fields = {"max_tokens": 8, "temperature": 1.0, "seed": 5, "ignore_eos": True, "n": 2}
    whole = chat(two_model_app, **fields)
    chunks = chat_chunks(two_model_app, stream_options={"include_usage": True}, **fields)
    assert texts_by_index(chunks, True) == {c.index: c.message.content for c in whole.choices}
    finishes = sorted((c.index, c.finish_reason) for ch in chunks for c in ch.choices if c.finish_reason)
    assert finishes == [(0, "length"), (1, "length")]
    assert chunks[-1].usage.completion_tokens == 16
    roles = [c.index for ch in chunks for c in ch.choices if c.delta.role == "assistant"]
    assert sorted(roles) == [0, 1]


def test_a_list_of_prompts_gives_prompts_times_n_choices_in_vllms_order(two_model_app):
    fields = {"max_tokens": 4, "temperature": 0, "ignore_eos": True}
    batch = completion(two_model_app, prompt=["Hello", "Good night"], n=2, **fields)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    first = completion(two_model_app, prompt="Hello", **fields)
    second = completion(two_model_app, prompt="Good night", **fields)
    assert [c.text for c in batch.choices] == [first.choices[0].text] * 2 + [second.choices[0].text] * 2
    assert batch.usage.prompt_tokens == first.usage.prompt_tokens + second.usage.prompt_tokens
    streamed = completion_chunks(two_model_app, prompt=["Hello", "Good night"], n=2, **fields)
    assert texts_by_index(streamed, False) == {c.index: c.text for c in batch.choices}
    ids = completion(two_model_app, prompt=[[1, 2, 3], [4, 5]], **fields)
    assert [c.index for c in ids.choices] == [0, 1]
    assert ids.usage.prompt_tokens == 5


def test_a_prompt_of_the_wrong_shape_is_400_naming_the_shapes(two_model_app):
    body = {"model": "qwen", "prompt": ["Hello", [1, 2]], "max_tokens": 2}
    response = httpx.post(f"{two_model_app}/v1/completions", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "prompt"
    assert error["message"] == (
        "invalid request: prompt: must be a string, a list of strings, a list of token ids "
        "or a list of token-id lists"
    )


def test_n_above_the_maximum_is_400(client):
    with pytest.raises(openai.BadRequestError, match="less than or equal to 16") as info:
        client.chat.completions.create(model="qwen", messages=CHAT, n=17, max_tokens=2)
    assert info.value.body["param"] == "n"


# --- logprobs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_have_the_chosen_token_and_top_k_in_rank_order(two_model_app, stream):
    fields = {"max_tokens": 6, "temperature": 0, "ignore_eos": True, "logprobs": True, "top_logprobs": 3}
    if stream:
        content = [
            item
            for ch in chat_chunks(two_model_app, **fields)
            for c in ch.choices
            if c.logprobs
            for item in c.logprobs.content
        ]
    else:
        content = chat(two_model_app, **fields).choices[0].logprobs.content
    assert len(content) == 6
    for item in content:
        tops = [top.logprob for top in item.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert item.logprob == pytest.approx(tops[0])  # greedy: the chosen token is the most likely
        assert item.token == item.top_logprobs[0].token
        assert item.bytes == list(item.token.encode("utf-8", errors="replace"))
        assert item.logprob <= 0


def test_chat_logprobs_without_top_logprobs_and_as_token_ids(two_model_app):
    reply = chat(two_model_app, max_tokens=3, logprobs=True, return_tokens_as_token_ids=True)
    items = reply.choices[0].logprobs.content
    assert len(items) == reply.usage.completion_tokens
    assert all(item.top_logprobs == [] and item.token.startswith("token_id:") for item in items)


def test_top_logprobs_needs_logprobs(client):
    with pytest.raises(openai.BadRequestError, match="top_logprobs requires logprobs"):
        client.chat.completions.create(model="qwen", messages=CHAT, top_logprobs=2, max_tokens=2)


@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs_shape(two_model_app, stream):
    fields = {"prompt": "The fox", "max_tokens": 5, "temperature": 0, "ignore_eos": True, "logprobs": 2}
    if stream:
        parts = [
            c.logprobs for ch in completion_chunks(two_model_app, **fields) for c in ch.choices if c.logprobs
        ]
        tokens = [t for p in parts for t in p.tokens]
        offsets = [o for p in parts for o in p.text_offset]
        tops = [t for p in parts for t in p.top_logprobs]
        token_logprobs = [t for p in parts for t in p.token_logprobs]
    else:
        logprobs = completion(two_model_app, **fields).choices[0].logprobs
        tokens, offsets, tops = logprobs.tokens, logprobs.text_offset, logprobs.top_logprobs
        token_logprobs = logprobs.token_logprobs
    assert len(tokens) == len(offsets) == len(tops) == len(token_logprobs) == 5
    assert offsets[0] == 0
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(5)]
    for top, token, logprob in zip(tops, tokens, token_logprobs, strict=True):
        assert 1 <= len(top) <= 3 and top[token] == logprob


@pytest.mark.parametrize("prompt", ["Once upon a time", [5, 17, 42, 9]])
def test_echo_with_max_tokens_0_scores_the_prompt(two_model_app, prompt):
    body = {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1}
    choice = completion(two_model_app, **body).choices[0]
    n_prompt = completion(two_model_app, prompt=prompt, max_tokens=1).usage.prompt_tokens
    assert len(choice.logprobs.tokens) == n_prompt
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in choice.logprobs.token_logprobs[1:])
    assert choice.finish_reason == "length"
    if isinstance(prompt, str):
        assert choice.text == prompt
    streamed = completion_chunks(two_model_app, **body)
    assert texts_by_index(streamed, False) == {0: choice.text}


@pytest.mark.parametrize("stream", [False, True])
def test_echo_leads_with_the_prompt_then_the_completion(two_model_app, stream):
    fields = {"prompt": "Once upon", "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    plain = completion(two_model_app, **fields).choices[0].text
    if stream:
        text = texts_by_index(completion_chunks(two_model_app, echo=True, **fields), False)[0]
    else:
        text = completion(two_model_app, echo=True, **fields).choices[0].text
    assert text == "Once upon" + plain


def test_echo_of_a_token_id_prompt_is_its_decoded_text(two_model_app):
    detok = post(two_model_app, "/detokenize", {"model": "llama-tiny", "tokens": [5, 17, 42]})["prompt"]
    reply = completion(two_model_app, prompt=[5, 17, 42], echo=True, max_tokens=2)
    assert reply.choices[0].text.startswith(detok)


# --- response_format -----------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "animal": {"type": "string", "enum": ["fox", "owl", "cat"]},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8},
        "wild": {"type": "boolean"},
    },
    "required": ["animal", "legs", "wild"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["qwen", "llama-tiny"])
def test_json_schema_output_validates_even_from_a_random_model(two_model_app, model, stream):
    fields = {
        "model": model,
        "messages": CHAT,
        "max_tokens": 100,
        "seed": 3,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": SCHEMA, "strict": True},
        },
    }
    if stream:
        text = texts_by_index(
            [
                ChatCompletionChunk.model_validate(e)
                for e in events(two_model_app, "/v1/chat/completions", fields)
            ],
            True,
        )[0]
    else:
        reply = ChatCompletion.model_validate(post(two_model_app, "/v1/chat/completions", fields))
        assert reply.choices[0].finish_reason == "stop"
        text = reply.choices[0].message.content
    jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_output_is_a_json_object(two_model_app):
    reply = completion(
        two_model_app, prompt="JSON:", max_tokens=60, seed=1, response_format={"type": "json_object"}
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].text), dict)


def test_structured_outputs_choice(two_model_app):
    reply = completion(
        two_model_app, prompt="Pick:", max_tokens=10, structured_outputs={"choice": ["yes", "no", "maybe"]}
    )
    assert reply.choices[0].text in {"yes", "no", "maybe"}


def test_json_schema_type_without_schema_is_400(client):
    with pytest.raises(openai.BadRequestError, match="json_schema is required"):
        client.chat.completions.create(
            model="qwen", messages=CHAT, max_tokens=4, response_format={"type": "json_schema"}
        )


# --- sampling controls ---------------------------------------------------------------------------


def test_logit_bias_forces_a_token(two_model_app):
    reply = completion(
        two_model_app, prompt="Hi", max_tokens=5, temperature=0, logit_bias={"42": 100}, ignore_eos=True
    )
    body = {"model": "llama-tiny", "prompt": reply.choices[0].text, "add_special_tokens": False}
    assert post(two_model_app, "/tokenize", body)["tokens"] == [42] * 5


def generated_ids(choice) -> list[int]:
    return [int(token.removeprefix("token_id:")) for token in choice.logprobs.tokens]


def test_stop_token_ids_and_allowed_token_ids(two_model_app):
    fields = {"prompt": "Hi", "max_tokens": 4, "logprobs": 0, "return_tokens_as_token_ids": True}
    free = completion(two_model_app, temperature=0, ignore_eos=True, **fields).choices[0]
    stopped = completion(two_model_app, temperature=0, stop_token_ids=generated_ids(free)[1:2], **fields)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == 2
    only = completion(
        two_model_app, temperature=1.0, seed=1, ignore_eos=True, allowed_token_ids=[50, 51], **fields
    )
    assert set(generated_ids(only.choices[0])) <= {50, 51}


@pytest.mark.parametrize(
    "fields",
    [
        {"top_k": 1, "temperature": 1.0},
        {"min_p": 1.0, "temperature": 1.0},
        {"temperature": 1e-9},
        {"top_p": 5e-324, "temperature": 1.0},
    ],
)
def test_settings_that_leave_one_token_act_greedy(two_model_app, fields):
    base = {"prompt": "The fox", "max_tokens": 6, "ignore_eos": True}
    greedy = completion(two_model_app, temperature=0, **base).choices[0].text
    assert completion(two_model_app, seed=4, **{**base, **fields}).choices[0].text == greedy


def test_penalties_and_min_tokens_are_honoured(two_model_app):
    base = {"prompt": "a a a a", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    plain = completion(two_model_app, **base).choices[0].text
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repetition_penalty": 3.0}):
        assert completion(two_model_app, **base, **penalty).choices[0].text != plain, penalty
    reply = completion(two_model_app, prompt="Hi", max_tokens=8, min_tokens=8, temperature=0)
    assert reply.usage.completion_tokens == 8


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("seed", 2**64, "less than or equal to 18446744073709551615"),
        ("seed", -(2**63) - 1, "greater than or equal to -9223372036854775808"),
        ("top_k", -2, "greater than or equal to -1"),
        ("min_p", 1.5, "less than or equal to 1"),
        ("presence_penalty", 2.5, "less than or equal to 2"),
        ("repetition_penalty", 0, "greater than 0"),
        ("logit_bias", {"5": 101}, "[-100, 100]"),
        ("logit_bias", {"fox": 1}, "token ids"),
        ("min_tokens", 9, "must not exceed max_tokens"),
    ],
)
def test_out_of_range_sampling_fields_are_400_naming_them(two_model_app, field, value, fragment):
    body = {"model": "qwen", "prompt": "hi", "max_tokens": 4, field: value}
    response = httpx.post(f"{two_model_app}/v1/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert fragment in error["message"]
    if field != "min_tokens":
        assert error["param"] == field


def test_user_and_metadata_are_accepted(client):
    reply = client.chat.completions.create(
        model="qwen", messages=CHAT, max_tokens=2, user="u-1", metadata={"team": "a"}
    )
    assert reply.choices[0].message.role == "assistant"


# --- routes --------------------------------------------------------------------------------------


def test_models_retrieve_names_and_aliases_with_max_model_len(client, two_model_app):
    alias = client.models.retrieve("qwen")
    assert (alias.id, alias.root, alias.parent, alias.max_model_len) == (
        "qwen",
        "qwen-tiny",
        "qwen-tiny",
        256,
    )
    name = Model.model_validate(httpx.get(f"{two_model_app}/v1/models/llama-tiny", timeout=30).json())
    assert (name.id, name.parent, name.max_model_len) == ("llama-tiny", None, 256)
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4")
    assert info.value.body["code"] == "model_not_found"
    for card in client.models.list().data:
        Model.model_validate(card.model_dump())


def test_tokenize_and_detokenize_round_trip(two_model_app, client):
    tokens = post(
        two_model_app, "/tokenize", {"model": "qwen", "prompt": "Hello world", "return_token_strs": True}
    )
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 256
    assert len(tokens["token_strs"]) == tokens["count"]
    back = post(two_model_app, "/detokenize", {"model": "qwen", "tokens": tokens["tokens"]})
    assert back["prompt"].endswith("Hello world")
    chat_tokens = post(two_model_app, "/tokenize", {"model": "qwen", "messages": CHAT})
    usage = client.chat.completions.create(model="qwen", messages=CHAT, max_tokens=1).usage
    assert chat_tokens["count"] == usage.prompt_tokens


def test_detokenize_outside_the_vocabulary_is_400(two_model_app):
    response = httpx.post(
        f"{two_model_app}/detokenize", json={"model": "qwen", "tokens": [10**9]}, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tokens"


# --- found by trying it as a new user ------------------------------------------------------------


def test_prompt_logprobs_come_back_in_vllms_shape(two_model_app):
    body = {"model": "llama-tiny", "prompt": [5, 17, 42, 9], "max_tokens": 1, "prompt_logprobs": 2}
    choice = post(two_model_app, "/v1/completions", body)["choices"][0]
    scored = choice["prompt_logprobs"]
    assert len(scored) == 4 and scored[0] is None
    for token_id, position in zip([17, 42, 9], scored[1:], strict=True):
        own = position[str(token_id)]
        assert own["rank"] >= 1 and own["logprob"] <= 0 and isinstance(own["decoded_token"], str)
        assert sorted(entry["rank"] for entry in position.values())[:2] == [1, 2]
    chat_body = {"model": "qwen", "messages": CHAT, "max_tokens": 1, "prompt_logprobs": 0}
    reply = post(two_model_app, "/v1/chat/completions", chat_body)
    ChatCompletion.model_validate(reply)
    prompt_tokens = reply["usage"]["prompt_tokens"]
    assert len(reply["prompt_logprobs"]) == prompt_tokens and reply["prompt_logprobs"][0] is None
    assert all(len(position) == 1 for position in reply["prompt_logprobs"][1:])


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"stream": True, "prompt_logprobs": 1}, "prompt_logprobs", "not available when stream is true"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only be given when stream is true"),
        ({"min_tokens": 9}, "min_tokens", "must not exceed max_tokens"),
        ({"truncate_prompt_tokens": 5000}, "truncate_prompt_tokens", "cannot be greater than"),
        ({"structured_outputs": {"regex": "(["}}, "structured_outputs", ""),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"$ref": "http://a/s"}},
                }
            },
            "response_format",
            "refers outside itself ($.$ref = 'http://a/s')",
        ),
        (
            {"structured_outputs": {"json": {"$ref": "file:///etc/passwd"}}},
            "structured_outputs",
            "refers outside",
        ),
    ],
)
def test_options_that_cannot_be_honoured_are_400_naming_the_field(two_model_app, body, param, fragment):
    response = httpx.post(
        f"{two_model_app}/v1/completions",
        json={"model": "qwen", "prompt": "hi", "max_tokens": 4, **body},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"continue_final_message": True}, "continue_final_message"),
    ],
)
def test_chat_cross_field_errors_name_the_field(two_model_app, body, param):
    response = httpx.post(
        f"{two_model_app}/v1/chat/completions",
        json={"model": "qwen", "messages": CHAT, "max_tokens": 2, **body},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_an_assistant_message_replayed_as_the_sdk_dumps_it_is_accepted(client):
    first = client.chat.completions.create(model="qwen", messages=CHAT, max_tokens=3)
    replayed = first.choices[0].message.model_dump()  # refusal, annotations, audio ... all null
    history = [*CHAT, replayed, {"role": "user", "content": "And then?"}]
    reply = client.chat.completions.create(model="qwen", messages=history, max_tokens=3)
    assert reply.choices[0].message.role == "assistant"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="qwen", messages=[*CHAT, {**replayed, "refusal": "I can't"}], max_tokens=3
        )
    assert info.value.body["param"] == "messages.1.refusal"


# --- found by attacking it ------------------------------------------------------------------------


def _completion_error(base: str, **fields) -> dict:
    body = {"model": "qwen", "prompt": "hi", "max_tokens": 4, **fields}
    response = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    return response.json()["error"]


def test_a_schema_nested_past_the_limit_inside_a_string_is_400(two_model_app):
    deep = '{"type":"array","items":' * 330 + '{"type":"string"}' + "}" * 330
    error = _completion_error(two_model_app, structured_outputs={"json": deep})
    assert error["param"] == "structured_outputs"
    assert error["message"] == "the JSON schema is nested more than 64 levels deep"


def test_choice_lists_are_bounded(two_model_app):
    error = _completion_error(two_model_app, structured_outputs={"choice": [f"c{i}" for i in range(1025)]})
    assert error["param"] == "structured_outputs.choice"
    assert "at most 1024 items" in error["message"]


@pytest.mark.parametrize(
    "constraint",
    [
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "loop", "schema": {"$ref": "#"}},
            }
        },
        {"structured_outputs": {"grammar": "root ::= x\nx ::= x"}},
    ],
)
def test_a_constraint_no_output_can_satisfy_is_400_not_500(two_model_app, constraint):
    error = _completion_error(two_model_app, **constraint)
    assert error["param"] == next(iter(constraint))
    assert "no token can be sampled" in error["message"]


def test_a_prompt_too_long_for_any_tokenization_is_refused_without_tokenizing(two_model_app):
    error = _completion_error(two_model_app, prompt="x" * 100_000)
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "prompt"
    assert "your request has 100000 characters of input, at least" in error["message"]


def test_tokenize_takes_either_shape_with_clear_errors(two_model_app):
    both = {"model": "qwen", "prompt": "hi", "messages": CHAT}
    response = httpx.post(f"{two_model_app}/tokenize", json=both, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "prompt"
    assert "unknown field" in error["message"] and "TokenizeCompletionRequest" not in error["message"]
