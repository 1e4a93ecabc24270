"""The broadcaster service's settings (``SCOREBOARD_*`` variables; see the README's table)."""

from __future__ import annotations

from common.settings import CommonSettings


class Settings(CommonSettings):
    """Frozen, read once at start."""

    service_name: str = "broadcaster"
    port: int = 8083
