"""Request and response bodies: strict JSON in (size-capped, validated by a model), JSON out."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from common.problems import BadRequest, Problem

MAX_BODY = 16 * 1024
M = TypeVar("M", bound=BaseModel)


async def read_json(request: web.Request, model: type[M]) -> M:
    """Parse the body as JSON into ``model``: 415 not JSON, 400 malformed or invalid fields."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise Problem(
            "send the body as application/json",
            status=415,
            title="Unsupported Media Type",
        )
    raw = await request.read()
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
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
