"""OpenTelemetry tracing: the standard ``OTEL_*`` configuration and OpenTelemetry's own
instrumentations for aiohttp (server and client), asyncpg, redis and aiokafka.

The instrumentations make the spans: one per HTTP request served (continuing an incoming
``traceparent``) or sent, per PostgreSQL query, per Redis command or pipeline, per Kafka record
sent and received (the ``traceparent`` travels in the record's headers). The services add spans by
hand only where no instrumentation sees the unit of work: the score service's batch apply and the
broadcaster's board apply and push (each linked to the records it handled).

What the standard variables do here (docs/operations.md, "Tracing"):

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): an OTLP/HTTP
  collector; spans go there in batches from a background thread.
  ``SCOREBOARD_OTEL_EXPORTER_ENDPOINT`` is a deprecated alias of the first, read only when neither
  is set.
- ``OTEL_TRACES_EXPORTER``: ``otlp`` (the default when an endpoint is set), ``console`` or ``none``.
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: the SDK's samplers. Unset, the standard
  ``parentbased_always_on`` applies when spans are exported; with no exporter and no sampler,
  tracing is off altogether (no provider, no instrumentation): the instrumentations cost the
  gateway 11-16% of its CPU per update even for spans not recorded (bench_tracing_overhead.py).
  ``OTEL_TRACES_SAMPLER=always_off`` without an exporter buys that: ids in every log line and
  ``traceparent`` through Kafka, nothing recorded.
- ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``: the resource (``service.name`` defaults to
  the service's own name).
- ``OTEL_SDK_DISABLED=true``: no provider, no instrumentation, no ids.
"""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
from opentelemetry.instrumentation.aiokafka import utils as aiokafka_utils
from opentelemetry.instrumentation.aiokafka.utils import AIOKafkaContextGetter
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler

KafkaHeaders = list[tuple[str, bytes]]

log = logging.getLogger(__name__)

# Probes, scrapes and WebSocket connections make no useful request spans (a WebSocket's would last
# as long as the connection); OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS replaces this list.
DEFAULT_EXCLUDED_URLS = "^/healthz$,^/readyz$,^/metrics$,^/ws/"


def instrumentors() -> list[BaseInstrumentor]:
    """OpenTelemetry's instrumentations this system uses (each a process-wide singleton)."""
    return [
        AioHttpServerInstrumentor(),
        AioHttpClientInstrumentor(),
        AsyncPGInstrumentor(),  # type: ignore[no-untyped-call]
        RedisInstrumentor(),
        AIOKafkaInstrumentor(),
    ]


def _exporter_endpoint(env: Mapping[str, str], alias: str) -> str:
    return (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or alias
    )


def _default_sampler(exporting: bool) -> Sampler:
    return ParentBased(ALWAYS_ON) if exporting else ALWAYS_OFF


def make_tracer_provider(
    service: str, exporter_endpoint: str = "", env: Mapping[str, str] | None = None
) -> TracerProvider:
    """A tracer provider for ``service`` configured by the ``OTEL_*`` variables in ``env``.

    ``exporter_endpoint`` is the deprecated ``SCOREBOARD_OTEL_EXPORTER_ENDPOINT``: an OTLP/HTTP
    collector's base URL, used when the standard variables name none.
    """
    env = os.environ if env is None else env
    endpoint = _exporter_endpoint(env, exporter_endpoint)
    kind = env.get("OTEL_TRACES_EXPORTER", "otlp" if endpoint else "none").strip().lower()
    exporting = kind in ("otlp", "console")
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the service's own name.
    resource = Resource.create({"service.name": service}).merge(OTELResourceDetector().detect())
    # None: the SDK reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG.
    sampler = None if env.get("OTEL_TRACES_SAMPLER") else _default_sampler(exporting)
    provider = TracerProvider(resource=resource, sampler=sampler)
    if kind == "otlp":
        # Imported here: the exporter pulls in protobuf, which a process without one never needs.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        standard = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        # The exporter reads the standard variables itself (endpoint, headers, timeout, TLS).
        url = None if standard else endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    elif kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif kind != "none":
        log.warning("unknown OTEL_TRACES_EXPORTER %r: spans are not exported", kind)
    return provider


class _LenientKafkaGetter(AIOKafkaContextGetter):
    """The aiokafka instrumentation's header getter, without its strict UTF-8 decode.

    Upstream's ``get`` calls ``value.decode()``: a record whose ``traceparent`` is not UTF-8
    raised UnicodeDecodeError inside the instrumented ``getmany``, after the fetch, which killed
    the score consumer's task (services/score/tests/test_hostile_commands.py found it). A header
    that does not decode carries no trace context here; the record itself is judged as usual.
    """

    def get(self, carrier: Sequence[tuple[str, bytes | None]], key: str) -> list[str] | None:
        for item_key, value in carrier:
            if item_key == key and isinstance(value, bytes):
                try:
                    return [value.decode("ascii")]
                except UnicodeDecodeError:
                    return None
        return None


def instrument(provider: trace.TracerProvider | None = None) -> None:
    """Turn OpenTelemetry's instrumentations on (idempotent), with ``provider`` or the global.

    The aiohttp server's applies to applications created afterwards, so this runs before the
    app factory (:func:`common.runner.serve` does).
    """
    os.environ.setdefault("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", DEFAULT_EXCLUDED_URLS)
    # The instrumentation looks its getter up at each call: a lenient one for hostile headers.
    aiokafka_utils._aiokafka_getter = _LenientKafkaGetter()
    for instrumentor in instrumentors():
        if not instrumentor.is_instrumented_by_opentelemetry:
            with warnings.catch_warnings():
                # The aiohttp server's instrumentation subclasses web.Application (to put its
                # middleware first), which aiohttp calls discouraged; it works as documented.
                warnings.filterwarnings(
                    "ignore", "Inheritance class _InstrumentedApplication", DeprecationWarning
                )
                instrumentor.instrument(tracer_provider=provider)


def uninstrument() -> None:
    """Turn the instrumentations off again (tests that install a provider of their own)."""
    for instrumentor in instrumentors():
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


def configure_tracing(service: str, exporter_endpoint: str = "") -> None:
    """Install the process's tracer provider and the instrumentations (the first call wins)."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    exporting = bool(_exporter_endpoint(env, exporter_endpoint)) or env.get(
        "OTEL_TRACES_EXPORTER", "none"
    ).strip().lower() not in ("none", "")
    if not exporting and not env.get("OTEL_TRACES_SAMPLER"):
        return  # nothing would receive spans: not even ids (see the module's docstring)
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        if exporter_endpoint and not _exporter_endpoint(env, ""):
            log.warning(
                "SCOREBOARD_OTEL_EXPORTER_ENDPOINT is deprecated: set OTEL_EXPORTER_OTLP_ENDPOINT"
            )
        trace.set_tracer_provider(make_tracer_provider(service, exporter_endpoint))
    instrument()


def inject_headers(headers: KafkaHeaders | None = None) -> KafkaHeaders:
    """Return Kafka headers carrying the current trace context (``traceparent``).

    For records sent without the aiokafka instrumentation (which injects on ``send``): the score
    relay's transactional batches carry the command's context this way, and tests use it.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    out = list(headers or [])
    out.extend((k, v.encode()) for k, v in carrier.items())
    return out


def extract_context(
    headers: Iterable[tuple[str, bytes | None]] | Sequence[tuple[str, bytes | None]],
) -> Context:
    """Rebuild the producer's trace context from a consumed record's headers.

    Headers are not signed and Kafka allows null values: a null one is ignored (it once stopped
    the score consumer), and an unparsable traceparent just starts a new trace. The first of
    repeated headers wins, as in the aiokafka instrumentation.
    """
    carrier: dict[str, str] = {}
    for k, v in headers:
        if v is not None:
            carrier.setdefault(k, v.decode("latin-1"))
    return propagate.extract(carrier)


def linked(
    headers_of: Iterable[Iterable[tuple[str, bytes | None]]], limit: int = 32
) -> list[trace.Link]:
    """Links to the sampled producer spans of a batch's first ``limit`` records (a batch span's
    links; a few are enough to navigate).

    Unsampled contexts are skipped: nothing recorded them, so a link would point nowhere.
    """
    links: list[trace.Link] = []
    for headers in itertools.islice(headers_of, limit):
        ctx = trace.get_current_span(extract_context(headers)).get_span_context()
        if ctx.is_valid and ctx.trace_flags.sampled:
            links.append(trace.Link(ctx))
    return links
