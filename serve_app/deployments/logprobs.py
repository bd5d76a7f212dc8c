"""Log-probabilities in OpenAI's shapes, as vLLM's OpenAI server renders them.

Token strings are each id decoded alone, ``tokenizer.decode([id])``, as vLLM's logprobs
processor does (vllm/tokenizers/detokenizer_utils.py ``convert_ids_list_to_tokens``), or
``"token_id:<id>"`` with ``return_tokens_as_token_ids``. Logprobs below -9999 (``-inf``) are
clamped to -9999.0, as vLLM does, so the JSON stays valid.

- Chat (``choices[].logprobs.content[]``): ``token``, ``logprob``, ``bytes`` (UTF-8 of the
  token string) and ``top_logprobs``, the ``top_logprobs`` most likely tokens in rank order.
- Completions (``choices[].logprobs``): parallel lists ``tokens``, ``token_logprobs``,
  ``top_logprobs`` (a dict of up to k + 1 entries: the sampled token, then the k most likely,
  as vLLM's ``_create_completion_logprobs``) and ``text_offset`` (character offset of each token
  in the choice's text, continued across streamed chunks).
"""

from __future__ import annotations

from typing import Any

from serve_app.engines.protocol import TokenLogprob

MIN_LOGPROB = -9999.0
# (token id, its logprobs) for one position; None where there are none (a prompt's first token).
Position = tuple[int, TokenLogprob | None]


class TokenStrings:
    """Token id -> the string logprobs show for it; cached (a vocabulary is finite)."""

    def __init__(self, tokenizer: Any, as_token_ids: bool = False) -> None:
        self.tokenizer = tokenizer
        self.as_token_ids = as_token_ids
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if self.as_token_ids:
            return f"token_id:{token_id}"
        text = self._cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id]) or ""
            if len(self._cache) < 262_144:
                self._cache[token_id] = text
        return text


def _clamp(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB)


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": _clamp(logprob),
        "bytes": list(token.encode("utf-8", errors="replace")),
    }


def chat_logprobs(entries: list[TokenLogprob], strings: TokenStrings) -> list[dict[str, Any]]:
    """``logprobs.content`` items for these tokens (their ``top`` already holds k entries)."""
    content = []
    for item in entries:
        entry = _entry(strings(item.token_id), item.logprob)
        entry["top_logprobs"] = [_entry(strings(token_id), logprob) for token_id, logprob in item.top]
        content.append(entry)
    return content


class CompletionLogprobs:
    """One completions choice's logprobs; keeps the text offset between streamed chunks."""

    def __init__(self, strings: TokenStrings) -> None:
        self.strings = strings
        self.offset = 0

    def render(self, positions: list[Position]) -> dict[str, Any]:
        tokens: list[str] = []
        token_logprobs: list[float | None] = []
        top_logprobs: list[dict[str, float] | None] = []
        text_offset: list[int] = []
        for token_id, item in positions:
            token = self.strings(token_id)
            tokens.append(token)
            text_offset.append(self.offset)
            self.offset += len(token)
            if item is None:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            token_logprobs.append(_clamp(item.logprob))
            top = {token: _clamp(item.logprob)}
            for top_id, logprob in item.top:
                top.setdefault(self.strings(top_id), _clamp(logprob))
            top_logprobs.append(top)
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": text_offset,
        }


def vllm_prompt_logprobs(
    entries: list[TokenLogprob | None], strings: TokenStrings
) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's ``prompt_logprobs`` response field: per prompt token, None for the first, else
    ``{"<token id>": {"logprob", "rank", "decoded_token"}}`` for the prompt's own token (first,
    with its vocabulary rank) and the k most likely (ranks 1..k), as vLLM serialises its
    ``Logprob`` dicts (vllm/logprobs.py; completions: on each choice, chat: on the response)."""
    rendered: list[dict[str, dict[str, Any]] | None] = []
    for item in entries:
        if item is None:
            rendered.append(None)
            continue
        position = {
            str(item.token_id): {
                "logprob": _clamp(item.logprob),
                "rank": item.rank,
                "decoded_token": strings(item.token_id),
            }
        }
        for rank, (token_id, logprob) in enumerate(item.top, start=1):
            position.setdefault(
                str(token_id), {"logprob": _clamp(logprob), "rank": rank, "decoded_token": strings(token_id)}
            )
        rendered.append(position)
    return rendered


def output_positions(token_ids: list[int], entries: list[TokenLogprob] | None) -> list[Position]:
    """Positions of generated tokens (each has logprobs when the request asked for them)."""
    if entries is None:
        return [(token_id, None) for token_id in token_ids]
    return [(item.token_id, item) for item in entries]


def prompt_positions(prompt_ids: list[int], entries: list[TokenLogprob | None] | None) -> list[Position]:
    """Positions of the prompt's tokens; the first has no logprobs (nothing precedes it)."""
    if entries is None:
        return [(token_id, None) for token_id in prompt_ids]
    return list(zip(prompt_ids, entries, strict=True))
