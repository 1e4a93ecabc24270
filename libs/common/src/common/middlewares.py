"""The middlewares every service's app runs: problems become problem+json, requests are counted.

Domain errors are :class:`common.problems.Problem` subclasses raised anywhere below; this is the
one place that renders them (and anything unexpected, as a logged 500).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource
from prometheus_client import CollectorRegistry, Counter, Histogram

from common.bodies import MAX_BODY
from common.metrics import http_metrics
from common.problems import Problem

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
REQUEST_ID = "X-Request-ID"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

request_id_key = web.RequestKey("request_id", str)


def problem_response(problem: Problem, request_id: str | None = None) -> web.Response:
    """Render a problem as ``application/problem+json``."""
    body = problem.body()
    if request_id:
        body["request_id"] = request_id
    headers = dict(problem.headers)
    if request_id:
        headers[REQUEST_ID] = request_id
    response = web.Response(
        status=problem.status, text=json.dumps(body), content_type=PROBLEM_JSON, headers=headers
    )
    if headers.get("Connection", "").lower() == "close":
        response.force_close()  # the connection cannot carry another request (a cut-off body)
    return response


_HTTP_TITLES = {413: "Payload Too Large", 404: "Not Found", 405: "Method Not Allowed"}


def new_request_id() -> str:
    """32 random hex digits, the form of ``uuid4().hex``.

    An id correlates logs, it guards nothing, so it need not come from the OS's random source:
    ``uuid4()`` reads ``os.urandom`` (a system call) and builds a UUID, about 4% of the
    gateway's CPU per read (py-spy). ``random`` is seeded from the OS and reseeded in a forked
    child, so processes do not repeat each other's ids.
    """
    return f"{random.getrandbits(128):032x}"


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One place where errors become responses: known problems as they are, others as 500."""
    rid = request.headers.get(REQUEST_ID) or new_request_id()
    if len(rid) > 128 or not rid.isprintable():
        rid = new_request_id()
    request[request_id_key] = rid
    structlog.contextvars.bind_contextvars(request_id=rid)
    try:
        response = await handler(request)
    except Problem as problem:
        return problem_response(problem, rid)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        title = _HTTP_TITLES.get(exc.status, exc.reason)
        detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else title
        if exc.status == 413:
            detail = f"request body exceeds {MAX_BODY} bytes"
        # 405 says which methods the route has (RFC 9110); other headers stay aiohttp's own.
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem_response(
            Problem(detail, status=exc.status, title=title, headers=headers), rid
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        return problem_response(Problem("an unexpected error occurred; it has been logged"), rid)
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    if not response.prepared:
        response.headers[REQUEST_ID] = rid
    return response


def metrics_middleware(service: str, registry: CollectorRegistry) -> Any:
    """Count requests and time them by route and status (the monitoring flow of the diagrams)."""
    requests, latency = http_metrics(registry)
    # The labelled children by (method, route, status): ``labels()`` builds and checks its key
    # under a lock on every call, about 2% of the gateway's CPU per read (py-spy).
    children: dict[tuple[str, AbstractResource | None, int], tuple[Counter, Histogram]] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            key = (request.method, request.match_info.route.resource, status)
            pair = children.get(key)
            if pair is None:
                route = key[1]
                name = route.canonical if route is not None else "unmatched"
                pair = children[key] = (
                    requests.labels(service, key[0], name, str(status)),
                    latency.labels(service, key[0], name),
                )
            pair[0].inc()
            pair[1].observe(time.perf_counter() - start)

    return middleware
