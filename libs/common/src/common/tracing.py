"""OpenTelemetry tracing and W3C ``traceparent`` propagation through Kafka headers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

KafkaHeaders = list[tuple[str, bytes]]


def make_tracer_provider(service: str, exporter_endpoint: str = "") -> TracerProvider:
    """A tracer provider naming ``service``.

    With ``exporter_endpoint`` (an OTLP/HTTP collector's base URL, like the standard
    ``OTEL_EXPORTER_OTLP_ENDPOINT``) spans are recorded and exported to ``<endpoint>/v1/traces``
    in batches from a background thread; the upstream's sampling decision is honoured. Without
    one, nothing would receive spans, so none are recorded (recording cost the gateway ~5% of its
    CPU for spans that were then dropped): spans still get ids, which reach the logs and Kafka
    headers, so a request's log lines can be followed across services.
    """
    resource = Resource.create({"service.name": service})
    if not exporter_endpoint:
        return TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON))
    endpoint = exporter_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def configure_tracing(service: str, exporter_endpoint: str = "") -> None:
    """Install the process's tracer provider (idempotent: the first call wins)."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    trace.set_tracer_provider(make_tracer_provider(service, exporter_endpoint))


def inject_headers(headers: KafkaHeaders | None = None) -> KafkaHeaders:
    """Return Kafka headers carrying the current trace context (``traceparent``)."""
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
    the score consumer), and an unparsable traceparent just starts a new trace.
    """
    carrier = {k: v.decode("latin-1") for k, v in headers if v is not None}
    return propagate.extract(carrier)
