"""``score``: serve the score service until SIGTERM (settings: ``--help``)."""

from __future__ import annotations

from common.runner import serve
from score.app import create_app
from score.settings import Settings


def main() -> None:
    """Serve until SIGTERM."""
    serve(Settings, create_app)


if __name__ == "__main__":
    main()
