"""OpenTelemetry tracing and W3C ``traceparent`` propagation through Kafka headers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

KafkaHeaders = list[tuple[str, bytes]]


def configure_tracing(service: str) -> None:
    """Install a tracer provider naming this service (idempotent: the first call wins).

    Spans are not exported unless an exporter is added; ids still reach logs and Kafka headers.
    """
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": service})))


def inject_headers(headers: KafkaHeaders | None = None) -> KafkaHeaders:
    """Return Kafka headers carrying the current trace context (``traceparent``)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    out = list(headers or [])
    out.extend((k, v.encode()) for k, v in carrier.items())
    return out


def extract_context(headers: Iterable[tuple[str, bytes]] | Sequence[tuple[str, bytes]]) -> Context:
    """Rebuild the producer's trace context from a consumed record's headers."""
    carrier = {k: v.decode("latin-1") for k, v in headers}
    return propagate.extract(carrier)
