"""Check 10: a tokenizer that loads, fits the embedding, and has a chat template.

``tokenizer.json`` is loaded with the ``tokenizers`` library directly (milliseconds); only a
checkpoint without one (sentencepiece, vocab.json) pays for transformers' AutoTokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from serve_app.preflight.report import CheckResult, failed, passed, warned

if TYPE_CHECKING:
    from serve_app.preflight.context import ModelContext

SLOW_TOKENIZER_FILES = ("tokenizer.model", "vocab.json", "tokenizer_config.json")


def _load(path: Path, trust_remote_code: bool) -> tuple[int, str]:
    """(token count including added tokens, what was loaded). Raises whatever the loader raises."""
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size(
            with_added_tokens=True
        ), "tokenizer.json"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    return len(tokenizer), type(tokenizer).__name__


def chat_template_source(path: Path) -> str | None:
    """Where the chat template comes from, as transformers looks for it; None when there is none."""
    if (path / "chat_template.jinja").is_file():
        return "chat_template.jinja"
    if (path / "chat_template.json").is_file():
        return "chat_template.json"
    try:
        config = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    return "tokenizer_config.json" if isinstance(config, dict) and config.get("chat_template") else None


def check_tokenizer(ctx: ModelContext) -> CheckResult:
    name = "tokenizer"
    path = ctx.ckpt.path
    if not any((path / f).is_file() for f in ("tokenizer.json", *SLOW_TOKENIZER_FILES)):
        return failed(
            name,
            f"no tokenizer files in {path}",
            "save the tokenizer next to the weights (tokenizer.save_pretrained)",
        )
    try:
        size, loaded = _load(path, ctx.spec.trust_remote_code)
    except Exception as exc:  # any loader error means "does not load"; its message is the detail
        return failed(
            name,
            f"tokenizer does not load: {type(exc).__name__}: {exc}",
            "re-save the tokenizer with transformers",
        )
    try:
        vocab = ctx.geometry.vocab
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        vocab = None
    if vocab is not None and size > vocab:
        return failed(
            name,
            f"tokenizer has {size} tokens but the embedding has vocab_size {vocab}: ids >= {vocab} crash the "
            "GPU kernel (device-side assert)",
            "use the tokenizer the model was trained with, or resize the embeddings before export",
        )
    template = chat_template_source(path)
    detail = f"{loaded} loads: {size} tokens" + (f" (vocab_size {vocab})" if vocab else "")
    if template is None:
        return warned(
            name,
            f"{detail}; no chat template, so /v1/chat/completions for this model answers 400 "
            "(completions work)",
            "add chat_template.jinja (or 'chat_template' in tokenizer_config.json)",
        )
    return passed(name, f"{detail}; chat template from {template}")
