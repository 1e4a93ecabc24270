"""Request and response bodies: strict JSON in (size-capped, validated by a model), JSON out."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from common.problems import BadRequest, Problem

MAX_BODY = 16 * 1024
MAX_DEPTH = 32
"""How deeply a JSON body may nest (no request of ours needs more than two levels)."""
M = TypeVar("M", bound=BaseModel)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"duplicate key {key[:64]!r}")
        obj[key] = value
    return obj


def _depth(value: Any, limit: int) -> bool:
    """Whether ``value`` nests no deeper than ``limit`` (iteratively: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return True


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, at most :data:`MAX_DEPTH` levels; else 400.

    The standard parser recurses per level, so very deep nesting (15,000 ``[`` fit in 16 KiB)
    exhausts the interpreter's stack: that is a client error, not a server one.
    """
    try:
        payload = json.loads(raw, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise BadRequest(f"body nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not _depth(payload, MAX_DEPTH):
        raise BadRequest(f"body nests deeper than {MAX_DEPTH} levels")
    return payload


async def read_json(request: web.Request, model: type[M]) -> M:
    """Parse the body as JSON into ``model``: 415 not JSON, 400 malformed or invalid fields."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise Problem(
            "send the body as application/json",
            status=415,
            title="Unsupported Media Type",
        )
    payload = parse_json(await request.read())
    if not isinstance(payload, dict):
        raise BadRequest("body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise BadRequest(f"invalid request: {summary}", extra={"errors": errors}) from None


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response (``default=str`` renders UUIDs and datetimes)."""
    return web.Response(
        status=status,
        text=json.dumps(data, default=str),
        content_type="application/json",
        headers=headers,
    )
