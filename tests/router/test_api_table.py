"""docs/openai-api.md lists every request field; each is honoured or refused with 400 naming it."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from serve_app.router.protocol import REFUSED, ChatCompletionRequest, CompletionRequest

TABLE = Path(__file__).resolve().parents[2] / "docs" / "openai-api.md"
MODELS = {"chat": ChatCompletionRequest, "completions": CompletionRequest}
ROUTES = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
BASE = {
    "chat": {"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "completions": {"model": "qwen", "prompt": "hi", "max_tokens": 2},
}


def table() -> dict[str, dict[str, str]]:
    """field -> {"chat": yes|400|-, "completions": ...} from the doc's markdown table."""
    rows: dict[str, dict[str, str]] = {}
    for line in TABLE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([a-z_]+)`", cells[0]):
            rows[name] = {"chat": cells[1], "completions": cells[2]}
    return rows


def model_fields(endpoint: str) -> set[str]:
    return {field.alias or name for name, field in MODELS[endpoint].model_fields.items()}


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_every_request_field_is_in_the_table_and_every_row_is_a_field(endpoint):
    rows = table()
    fields = model_fields(endpoint)
    assert sorted(fields - {name for name, row in rows.items() if row[endpoint] != "-"}) == []
    assert sorted({name for name, row in rows.items() if row[endpoint] != "-"} - fields) == []


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_fields_marked_yes_are_not_refused(endpoint):
    honoured = {name for name, row in table().items() if row[endpoint] == "yes"}
    assert sorted(honoured & set(REFUSED)) == []


def refused_cases() -> list[tuple[str, str]]:
    return [
        (endpoint, name)
        for name, row in table().items()
        for endpoint in ("chat", "completions")
        if row[endpoint] == "400"
    ]


@pytest.mark.parametrize(("endpoint", "field"), refused_cases())
def test_fields_marked_400_are_refused_naming_the_field(two_model_app, endpoint, field):
    body = {**BASE[endpoint], field: "on"}
    response = httpx.post(f"{two_model_app}{ROUTES[endpoint]}", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert field in error["message"]
    assert error["type"] == "BadRequestError"


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_field_outside_both_lists_is_400_naming_it(two_model_app, endpoint):
    body = {**BASE[endpoint], "max_token": 5}
    response = httpx.post(f"{two_model_app}{ROUTES[endpoint]}", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "max_token"
    assert "unknown field" in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("store", False),
        ("service_tier", "auto"),
        ("modalities", ["text"]),
    ],
)
def test_refused_fields_may_be_sent_switched_off(client, field, value):
    reply = client.chat.completions.create(
        model="qwen", messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body={field: value}
    )
    assert reply.choices[0].message.role == "assistant"
