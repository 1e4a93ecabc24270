"""Request and response bodies: strict JSON in (size-capped, validated by a model), JSON out."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from pydantic import BaseModel, ValidationError

from common.problems import BadRequest, Problem

MAX_BODY = 16 * 1024
MAX_DEPTH = 32
"""How deeply a JSON body may nest (no request of ours needs more than two levels)."""
BODY_TIMEOUT_S = 10.0
"""How long a request body may take to arrive (``SCOREBOARD_HTTP_BODY_TIMEOUT_S``)."""
M = TypeVar("M", bound=BaseModel)

body_timeout_key = web.AppKey("body_timeout_s", float)
"""The app's body read timeout (set from the settings by :func:`common.runner.serve`)."""


class BodyTimeout(Problem):
    """408: the body did not arrive in time (a client trickling it in holds no handler for long)."""

    status = 408
    title = "Request Timeout"


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"duplicate key {key[:64]!r}")
        obj[key] = value
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


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
        # What json.loads does with bytes, but with the one decoder: json.loads builds a new
        # JSONDecoder (and its scanner) for every call given a hook, ~1% of an update's CPU.
        payload = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RecursionError:
        raise BadRequest(f"body nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not _depth(payload, MAX_DEPTH):
        raise BadRequest(f"body nests deeper than {MAX_DEPTH} levels")
    return payload


async def read_body(request: web.Request) -> bytes:
    """The whole body (at most ``client_max_size``: 413), within the app's body timeout: 408;
    one that cannot be decoded (``Content-Encoding: gzip`` that is not): 400.

    aiohttp bounds the wait for a request's headers (the keep-alive timeout, which runs from
    the connection's start) but not for its body: without this, a client sending one byte a
    second would hold a handler, and its socket, for as long as it likes.
    """
    timeout = request.app.get(body_timeout_key, BODY_TIMEOUT_S)
    try:
        if request.content.is_eof():
            # All of it has arrived (as a small body does with its headers): nothing to wait
            # for, and no timer to arm and cancel (~2% of the gateway's CPU per update).
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise BodyTimeout(
            f"the request body did not arrive within {timeout:g} s",
            headers={"Connection": "close"},
        ) from None
    except web.RequestPayloadError as exc:
        # A body aiohttp cannot decode (a Content-Encoding it is not, broken chunks).
        raise BadRequest(
            f"the request body cannot be read: {str(exc).strip()[:200]}",
            headers={"Connection": "close"},
        ) from None


async def read_json(request: web.Request, model: type[M]) -> M:
    """Parse the body as JSON into ``model``: 415 not JSON, 400 malformed or invalid fields."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise Problem(
            "send the body as application/json",
            status=415,
            title="Unsupported Media Type",
        )
    payload = parse_json(await read_body(request))
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


# msgspec, not json.dumps: a 1,000-entry board page took 0.9 ms to encode with json.dumps and
# 0.1 ms with msgspec. UUIDs come out as json.dumps(default=str) wrote them, datetimes as RFC 3339
# (the handlers pass isoformat() strings anyway), other types through str; non-ASCII as UTF-8.
_ENCODER = msgspec.json.Encoder(enc_hook=str)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response (UTF-8)."""
    return web.Response(
        status=status,
        body=_ENCODER.encode(data),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )
