"""One walk over a JSON schema, shared by the router's checks and the engines' feature checks.

Iterative, so a deep schema cannot exhaust the stack (a schema sent as a string escapes the
body's own depth limit, ``router/limits.py``); past ``MAX_SCHEMA_DEPTH`` levels it raises.
Light on imports: the router uses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from serve_app.errors import InvalidRequestError

MAX_SCHEMA_DEPTH = 64  # as the body's own nesting limit (router/limits.py max_json_depth)


def schema_nodes(schema: Any) -> Iterator[tuple[dict[str, Any] | list[Any], str]]:
    """Every object and list in ``schema`` with its path (``$``, ``$.properties.a``, ``$[0]``), in
    document order (a node before its children, keys in order).

    Raises InvalidRequestError (``param`` None: the caller names the field) for nesting past
    ``MAX_SCHEMA_DEPTH``."""
    stack: list[tuple[Any, str, int]] = [(schema, "$", 0)]
    while stack:
        node, path, depth = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_SCHEMA_DEPTH:
            raise InvalidRequestError(
                f"the JSON schema is nested more than {MAX_SCHEMA_DEPTH} levels deep", param=None
            )
        yield node, path
        children = (
            [(value, f"{path}.{key}") for key, value in node.items()]
            if isinstance(node, dict)
            else [(item, f"{path}[{i}]") for i, item in enumerate(node)]
        )
        stack.extend((child, where, depth + 1) for child, where in reversed(children))
