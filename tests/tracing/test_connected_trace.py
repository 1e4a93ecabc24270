"""One trace from a score update to the WebSocket push, through the real apps and servers.

Gateway, score service and broadcaster run in-process (each on its own port, as in their own
tests) on the run's PostgreSQL, Redis and Kafka, with OpenTelemetry's instrumentations on and
every span kept in memory (testkit.tracing). The update request carries a ``traceparent`` of a
client's; what follows must hang together: the request continues it, the command's record
carries the send span's context to the score service, whose batch apply links to it, the
ScoreChanged continues it to the broadcaster, whose board apply and push link back.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import broadcaster.settings
import gateway.settings
import score.settings
from common.events import Topics
from gateway.app import create_app as create_gateway
from gateway.catalog import DEFAULT_CATALOG
from gateway.components import components_key
from services.gateway.tests.support import SigningKey, TokenMint, Upstream, bearer
from services.score.tests.support import running
from testkit.broadcaster import high_score, new_player, seed
from testkit.broadcaster import serve as serve_broadcaster
from testkit.env import TestEnv, provision_topics, unprovision_topics
from testkit.tracing import recorded_spans

UPDATE = "/api/scoreboard/update"


@pytest.fixture
async def topic_prefix(test_env: TestEnv) -> AsyncIterator[str]:
    """Topics of this test's own (only its command and change are on them)."""
    prefix = f"{test_env.topic_prefix}trace-{uuid.uuid4().hex[:8]}."
    await provision_topics(test_env, prefix, partitions=1)
    yield prefix
    await unprovision_topics(test_env, prefix)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span of the test (the instrumentations on, an always-on sampler)."""
    with recorded_spans("trace-test") as exporter:
        yield exporter


def _settings(test_env: TestEnv, topic_prefix: str, tag: str) -> dict[str, object]:
    return {
        **test_env.overrides(),
        "topic_prefix": topic_prefix,
        "redis_prefix": f"{test_env.redis_prefix}trace-{tag}:",
        "log_json": False,
    }


async def _wait_for(spans: InMemorySpanExporter, name: str) -> None:
    async with asyncio.timeout(20):
        while not any(s.name == name for s in spans.get_finished_spans()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # (the exporter has nothing to wait on)


def _connected(spans: list[ReadableSpan], start: ReadableSpan) -> set[int]:
    """Span ids reachable from ``start`` through parent and link edges (either way)."""
    edges: dict[int, set[int]] = defaultdict(set)
    for s in spans:
        assert s.context is not None
        ends = [p.span_id for p in ([s.parent] if s.parent else [])]
        ends += [link.context.span_id for link in s.links]
        for other in ends:
            edges[s.context.span_id].add(other)
            edges[other].add(s.context.span_id)
    assert start.context is not None
    seen, todo = {start.context.span_id}, [start.context.span_id]
    while todo:
        for nxt in edges[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


async def test_an_update_is_one_connected_trace_to_the_websocket_push(
    test_env: TestEnv,
    pg: asyncpg.Connection,
    topic_prefix: str,
    spans: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    key = SigningKey.ed25519("trace-test")
    mint = TokenMint(key)
    upstream = Upstream(jwks=[key.jwk()])  # auth's JWKS (the gateway verifies tokens with it)
    upstream_server = TestServer(upstream.build(), host="127.0.0.1")
    await upstream_server.start_server()
    upstream.server = upstream_server
    (tmp_path / "index.html").write_text("<!doctype html>")
    # A player ahead of everyone in the run's database, so the change moves the top list.
    leader = new_player("trace")
    leader.gain(await high_score(pg))
    await seed(pg, [leader])
    user_id = leader.user_id
    tag = uuid.uuid4().hex[:8]
    catalog = {n: {"points": s.points, "min_duration_ms": 0} for n, s in DEFAULT_CATALOG.items()}
    gw = TestClient(
        TestServer(
            create_gateway(
                gateway.settings.Settings.load(
                    **_settings(test_env, topic_prefix, f"gw-{tag}"),
                    auth_url=upstream.url,
                    broadcaster_url=upstream.url,
                    static_dir=tmp_path,
                    action_hmac_keys="t1:test-hmac-secret-0123456789",
                    action_catalog=catalog,
                )
            ),
            host="127.0.0.1",
        )
    )
    score_settings = score.settings.Settings.load(
        **_settings(test_env, topic_prefix, f"score-{tag}"),
        group_id=f"{topic_prefix}score",
        action_catalog={n: {"points": s.points} for n, s in DEFAULT_CATALOG.items()},
        postgres_pool_max=2,
        relay_poll_ms=100,
    )
    bc_settings = broadcaster.settings.Settings.load(
        **_settings(test_env, topic_prefix, f"bc-{tag}"),
        group_id_prefix=f"{topic_prefix}broadcaster",
        replica_id=tag,
        consumer_offset_reset="earliest",
    )
    try:
        await gw.start_server()
        await gw.app[components_key].publisher.wait_started()
        async with (
            serve_broadcaster(bc_settings) as bc,
            running(score_settings),
            bc.ws_connect("/ws/scoreboard") as ws,
        ):
            await ws.receive_json(timeout=10)  # the snapshot
            auth = bearer(mint.mint(user_id, sid=str(uuid.uuid4())))
            resp = await gw.post("/api/actions", json={"action_type": "tap"}, headers=auth)
            assert resp.status == 201, await resp.text()
            ticket = await resp.json()
            body = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
            # The player's own span: the (instrumented) HTTP client sends its traceparent.
            with trace.get_tracer("player").start_as_current_span("player") as player:
                resp = await gw.post(UPDATE, json=body, headers=auth)
                assert resp.status == 202, await resp.text()
            async with asyncio.timeout(20):  # the change reaches the watcher
                while str(user_id) not in json.dumps(await ws.receive_json()):
                    pass
            await _wait_for(spans, "board push")
    finally:
        await gw.close()
        await upstream_server.close()

    finished = list(spans.get_finished_spans())
    topics = Topics(topic_prefix)

    def one(name: str, kind: SpanKind | None = None) -> ReadableSpan:
        found = [s for s in finished if s.name == name and (kind is None or s.kind == kind)]
        assert found, f"no span {name!r} among {sorted({s.name for s in finished})}"
        return found[0]

    request = one(f"POST {UPDATE}", SpanKind.SERVER)
    assert request.context is not None
    # The incoming traceparent is continued: the request is the client span's child.
    assert request.parent is not None
    [sent] = [s for s in finished if s.context and s.context.span_id == request.parent.span_id]
    assert (sent.name, sent.kind) == ("POST", SpanKind.CLIENT)
    assert sent.parent is not None
    assert sent.parent.span_id == player.get_span_context().span_id
    assert request.context.trace_id == player.get_span_context().trace_id
    # The command's send span is the request's child; the score service's receive continues it.
    send = one(f"{topics.commands} send", SpanKind.PRODUCER)
    assert send.parent is not None
    assert send.parent.span_id == request.context.span_id
    assert send.context is not None
    received = one(f"{topics.commands} receive", SpanKind.CONSUMER)
    assert received.parent is not None
    assert received.parent.span_id == send.context.span_id
    apply = one("score.apply_batch")
    assert send.context.span_id in {link.context.span_id for link in apply.links}
    # The apply wrote to PostgreSQL inside its span (asyncpg's instrumentation).
    assert apply.context is not None
    assert any(
        s.parent is not None
        and s.parent.span_id == apply.context.span_id
        and s.attributes is not None
        and s.attributes.get("db.system") == "postgresql"
        for s in finished
    )
    # The ScoreChanged carries the command's context on to the broadcaster.
    changed = one(f"{topics.changed} receive", SpanKind.CONSUMER)
    assert changed.parent is not None
    assert changed.parent.span_id == send.context.span_id
    assert changed.context is not None
    assert changed.context.trace_id == request.context.trace_id
    board_apply = one("board apply")
    push = one("board push")
    assert board_apply.context is not None
    assert board_apply.context.span_id in {link.context.span_id for link in push.links}
    # One connected graph from the request to the push.
    reachable = _connected(finished, request)
    for span in (send, received, apply, changed, board_apply, push):
        assert span.context is not None
        assert span.context.span_id in reachable, span.name
