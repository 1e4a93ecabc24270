"""Recording every span of a test in memory, with the real instrumentations (like OpenTelemetry's
own test utilities, which are not a dependency here).

The process's tracer provider is set once (``opentelemetry.trace`` refuses a second), and the
instrumentations keep the provider they were turned on with; so for the duration of a test this
swaps both, then puts back what was there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.util._once import Once

from common.tracing import instrument, instrumentors, uninstrument


def _install(provider: trace.TracerProvider | None) -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    if provider is not None:
        trace.set_tracer_provider(provider)


@contextmanager
def recorded_spans(service: str = "test") -> Iterator[InMemorySpanExporter]:
    """Every span from here on, sampled and kept in memory; instrumentations on meanwhile."""
    previous = trace._TRACER_PROVIDER
    was_instrumented = any(i.is_instrumented_by_opentelemetry for i in instrumentors())
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), sampler=ALWAYS_ON
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    uninstrument()
    _install(provider)
    instrument()
    try:
        yield exporter
    finally:
        uninstrument()
        provider.shutdown()
        _install(previous)
        if was_instrumented:
            instrument()
