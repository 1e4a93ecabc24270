"""Score commands to Kafka: the idempotent, acks=all producer, started lazily.

The gateway must start (and answer health checks) while Kafka is down, so the producer is started
by a background task that retries with backoff; until it is up, and whenever Kafka does not
acknowledge a command within ``publish_timeout_s``, :meth:`CommandPublisher.publish_claimed`
releases the action's claim and answers 503 (nothing was recorded; the client may retry).

A timed-out send may still reach Kafka later. That is safe: the retry publishes the same action id
again and the score service applies an action id at most once (primary key on ``actions``).

Every command carries an ``x-signature`` header (common.command_signing) over its exact key and
value bytes, made with the current signing key: the score service applies nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time

import structlog
from aiokafka import AIOKafkaProducer
from opentelemetry import trace

from common.backoff import Backoff
from common.command_signing import CommandSigner
from common.events import (
    GATEWAY_SOURCE,
    STRUCTURED_MODE_HEADER,
    ScoreCommand,
    ScoreCommandEvent,
    Topics,
    encode,
    utcnow,
)
from common.kafka import make_producer
from common.problems import ServiceUnavailable
from gateway.claims import Claims
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings

log = structlog.get_logger(__name__)


class PublishFailed(Exception):
    """Kafka did not take the command (not connected, error, or no ack in time)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CommandNotRecorded(ServiceUnavailable):
    """503: Kafka did not take the command; nothing was recorded, a retry is safe."""

    def __init__(self) -> None:
        super().__init__(
            "the score update could not be recorded right now; nothing was applied, "
            "retry the same request",
            headers={"Retry-After": "1"},
        )


class KafkaNotReady(Exception):
    """Readiness: the producer has not started yet."""


class CommandPublisher:
    """Publishes :class:`ScoreCommand` events keyed by user id, waiting for acks=all."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics, claims: Claims) -> None:
        self._settings = settings
        self._metrics = metrics
        self._claims = claims
        self._topic = Topics(settings.topic_prefix).commands
        self._signer = CommandSigner(settings.command_signing_key)
        self._timeout = settings.publish_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._started = asyncio.Event()

    @property
    def started(self) -> bool:
        """Whether the producer is connected and can publish."""
        return self._producer is not None

    async def wait_started(self) -> None:
        """Return once the producer has started."""
        await self._started.wait()

    async def check_ready(self) -> None:
        """Readiness check: raises while the producer is not started."""
        if self._producer is None:
            raise KafkaNotReady("kafka producer not started")

    async def run(self) -> None:
        """Start the producer, retrying with backoff until Kafka answers."""
        backoff = Backoff(base_s=0.5, cap_s=10.0)
        client_id = f"gateway-{socket.gethostname()}"
        while self._producer is None:
            producer = make_producer(self._settings, client_id=client_id, linger_ms=2)
            attempt = asyncio.ensure_future(producer.start())
            try:
                await asyncio.shield(attempt)
            except asyncio.CancelledError:
                # Shutting down: a bootstrap cancelled midway leaks its connection, so let the
                # attempt end (briefly) and then stop the producer properly.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(attempt, 5.0)
                await producer.stop()
                raise
            except Exception as exc:  # any start failure means "Kafka not reachable yet"
                delay = backoff.next_delay()
                log.warning(
                    "kafka_producer_unavailable", error=repr(exc), retry_in_s=round(delay, 2)
                )
                with contextlib.suppress(Exception):
                    await producer.stop()
                await asyncio.sleep(delay)
                continue
            self._producer = producer
            self._started.set()
            log.info("kafka_producer_started", topic=self._topic)

    async def close(self) -> None:
        """Flush and stop the producer, if it started."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish_claimed(self, command: ScoreCommand) -> None:
        """Publish a claimed command; on any failure release the claim so a retry can succeed.

        Raises :class:`CommandNotRecorded` (503) when Kafka did not take it.
        """
        if self._settings.crash_point == "after_claim":
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection for tests: never in production
        try:
            await self.publish(command)
        except BaseException as exc:
            try:
                # Shielded: even a cancelled request must not leave the action claimed, unsent.
                release = self._claims.release(
                    command.action_id, command.accepted_at, command.user_id, command.action_type
                )
                await asyncio.shield(release)
            except Exception:
                log.exception("release_failed", action_id=str(command.action_id))
            if isinstance(exc, PublishFailed):
                raise CommandNotRecorded from None
            raise
        try:
            await self._claims.mark_published(command.action_id, command.accepted_at, utcnow())
        except Exception as exc:
            # Kafka has it, so it will be applied; until then a retry waits for this claim and
            # then publishes again (harmless: applied at most once).
            log.warning("mark_published_failed", action_id=str(command.action_id), error=repr(exc))

    async def publish(self, command: ScoreCommand) -> None:
        """Publish and wait for the acks=all acknowledgement, or raise :class:`PublishFailed`."""
        producer = self._producer
        if producer is None:
            self._metrics.publish_failures.labels("not_connected").inc()
            raise PublishFailed("not_connected")
        event = ScoreCommandEvent.wrap(command, source=GATEWAY_SOURCE)
        value = encode(event)
        # The event's subject and id are the user and action ids as text, already formatted.
        key = event.subject.encode()
        started = time.perf_counter()
        # The aiokafka instrumentation makes the send span and puts its traceparent in the
        # headers; the request's span says which action this was.
        trace.get_current_span().set_attribute("scoreboard.action_id", event.id)
        try:
            async with asyncio.timeout(self._timeout):
                await producer.send_and_wait(
                    self._topic,
                    value,
                    key=key,
                    headers=[STRUCTURED_MODE_HEADER, self._signer.header(key, value)],
                )
        except TimeoutError:
            self._metrics.publish_failures.labels("timeout").inc()
            log.warning("publish_timeout", action_id=str(command.action_id))
            raise PublishFailed("timeout") from None
        except Exception as exc:  # aiokafka raises many types; all mean "not recorded"
            self._metrics.publish_failures.labels("error").inc()
            log.warning("publish_failed", action_id=str(command.action_id), error=repr(exc))
            raise PublishFailed("error") from exc
        self._metrics.publish_seconds.observe(time.perf_counter() - started)
        self._metrics.commands_accepted.labels(command.action_type).inc()
