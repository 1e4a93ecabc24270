"""``broadcaster``: serve the broadcaster service until SIGTERM (settings: ``--help``)."""

from __future__ import annotations

from broadcaster.app import create_app
from broadcaster.settings import Settings
from common.runner import serve


def main() -> None:
    """Serve until SIGTERM."""
    serve(Settings, create_app)


if __name__ == "__main__":
    main()
