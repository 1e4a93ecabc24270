"""The auth service's Prometheus metrics, on the app's registry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from auth.security import SecurityRejection
from common.problems import BadRequest, Problem


@dataclass(frozen=True)
class AuthMetrics:
    """Counters by outcome (``success`` or the rejection reason) and hashing time."""

    logins: Counter
    registrations: Counter
    refreshes: Counter
    logouts: Counter
    password_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AuthMetrics:
        """Register the metrics on ``registry``."""

        def outcomes(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["outcome"], registry=registry)

        return cls(
            logins=outcomes("scoreboard_auth_logins", "Login attempts by outcome"),
            registrations=outcomes("scoreboard_auth_registrations", "Registrations by outcome"),
            refreshes=outcomes("scoreboard_auth_refreshes", "Token refreshes by outcome"),
            logouts=outcomes("scoreboard_auth_logouts", "Logouts by outcome"),
            password_seconds=Histogram(
                "scoreboard_auth_password_hash_seconds",
                "argon2id hash/verify time, queueing included",
                ["op"],
                buckets=(0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5),
                registry=registry,
            ),
        )


@contextmanager
def count_outcome(counter: Counter) -> Iterator[None]:
    """Count the block's outcome: ``success``, the rejection's reason, or ``error``."""
    try:
        yield
    except SecurityRejection as exc:
        counter.labels(exc.reason).inc()
        raise
    except (BadRequest, web.HTTPRequestEntityTooLarge):
        counter.labels("invalid_request").inc()
        raise
    except Problem as exc:
        counter.labels("unavailable" if exc.status == 503 else "error").inc()
        raise
    except Exception:
        counter.labels("error").inc()
        raise
    counter.labels("success").inc()
