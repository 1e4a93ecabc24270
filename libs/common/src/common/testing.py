"""Test-run plumbing shared by the root conftest and the suites (like aiohttp.test_utils)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Infra:
    """Where the real servers of this run listen."""

    postgres_admin_dsn: str  # a role that may create databases
    redis_url: str
    kafka_bootstrap: str


@dataclass(frozen=True)
class TestEnv:
    """This run's isolated slice of the servers, as ``SCOREBOARD_*`` settings."""

    postgres_dsn: str
    redis_url: str
    redis_prefix: str
    kafka_bootstrap: str
    topic_prefix: str

    def overrides(self) -> dict[str, str]:
        """Settings keyword arguments (for ``Settings.load(**overrides)``)."""
        return {
            "postgres_dsn": self.postgres_dsn,
            "redis_url": self.redis_url,
            "redis_prefix": self.redis_prefix,
            "kafka_bootstrap": self.kafka_bootstrap,
            "topic_prefix": self.topic_prefix,
        }

    def environ(self) -> dict[str, str]:
        """The same settings as environment variables, for services run as subprocesses."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
        env.update({f"SCOREBOARD_{k.upper()}": v for k, v in self.overrides().items()})
        return env
