"""Tracing: the standard OTEL_* variables; spans are exported over OTLP/HTTP when an endpoint is
set; without one they are not recorded, yet their ids still travel through Kafka headers to the
consumer and into every log line written inside them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from common.logs import configure_logging
from common.tracing import extract_context, inject_headers, make_tracer_provider


async def test_spans_are_exported_to_the_otlp_endpoint() -> None:
    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    provider = make_tracer_provider("svc-under-test", str(server.make_url("/")))
    try:
        with provider.get_tracer("test").start_as_current_span("publish") as span:
            span.set_attribute("scoreboard.action_id", "a-1")
            assert span.is_recording()
        # The exporter is synchronous (its own thread); keep the loop free for the server.
        assert await asyncio.to_thread(provider.force_flush, 10_000)
    finally:
        await asyncio.to_thread(provider.shutdown)
        await server.close()
    spans = [
        (resource.resource, span)
        for message in received
        for resource in message.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert [s.name for _, s in spans] == ["publish"]
    resource, exported = spans[0]
    attributes = {a.key: a.value.string_value for a in resource.attributes}
    assert attributes["service.name"] == "svc-under-test"
    assert {a.key: a.value.string_value for a in exported.attributes} == {
        "scoreboard.action_id": "a-1"
    }


def test_without_an_endpoint_spans_are_not_recorded_but_ids_propagate() -> None:
    provider = make_tracer_provider("svc-under-test")
    with provider.get_tracer("test").start_as_current_span("publish") as span:
        assert not span.is_recording()
        context = span.get_span_context()
        assert context.is_valid
        headers = inject_headers()
    assert [k for k, _ in headers] == ["traceparent"]
    received = trace.get_current_span(extract_context(headers)).get_span_context()
    assert (received.trace_id, received.span_id) == (context.trace_id, context.span_id)


def test_the_standard_variables_configure_sampler_and_resource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
    provider = make_tracer_provider("gateway")
    with provider.get_tracer("test").start_as_current_span("x") as span:
        assert span.is_recording()  # sampled without any exporter: OTEL_TRACES_SAMPLER says so
    attributes = provider.resource.attributes
    assert attributes["service.name"] == "gateway-eu"
    assert attributes["deployment.environment"] == "staging"


def test_without_variables_the_service_names_itself_and_records_nothing() -> None:
    provider = make_tracer_provider("score", env={})
    assert provider.resource.attributes["service.name"] == "score"
    with provider.get_tracer("test").start_as_current_span("x") as span:
        assert not span.is_recording()


def test_every_log_line_inside_a_span_carries_its_ids(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("svc-under-test", json=True)
    try:
        provider = make_tracer_provider("svc-under-test", env={})  # not recorded: ids all the same
        with provider.get_tracer("test").start_as_current_span("work") as span:
            structlog.get_logger("test").info("inside")
            logging.getLogger("stdlib").warning("inside too")
        structlog.get_logger("test").info("outside")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ctx = span.get_span_context()
    ids = {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}
    assert [{k: line.get(k) for k in ids} for line in lines] == [ids, ids, dict.fromkeys(ids)]


def test_without_exporter_or_sampler_tracing_stays_off() -> None:
    """No provider and no instrumentation: what they cost would buy nothing (docs/operations).
    In a process of its own: the provider and the instrumentations are process-wide."""
    probe = (
        "from opentelemetry import trace\n"
        "from common.tracing import configure_tracing, instrumentors\n"
        "configure_tracing('svc')\n"
        "print(type(trace.get_tracer_provider()).__name__,"
        " any(i.is_instrumented_by_opentelemetry for i in instrumentors()))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SCOREBOARD_"))}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["ProxyTracerProvider", "False"]
    sampled = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "OTEL_TRACES_SAMPLER": "always_off"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert sampled.split() == ["TracerProvider", "True"]
