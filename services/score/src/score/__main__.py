"""``score``: start the score service."""

from __future__ import annotations

from common.logs import configure_logging
from common.tracing import configure_tracing
from common.web import run
from score.app import create_app
from score.settings import Settings


def main() -> None:
    """Load settings, set up logging and tracing, serve until SIGTERM."""
    settings = Settings.load()
    configure_logging(settings.service_name, settings.log_level, json=settings.log_json)
    configure_tracing(settings.service_name, settings.otel_exporter_endpoint)
    run(create_app(settings), settings.host, settings.port, reuse_port=settings.reuse_port)


if __name__ == "__main__":
    main()
