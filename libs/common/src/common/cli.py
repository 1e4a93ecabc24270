"""What every console script answers before doing anything: ``--help`` and ``--version``.

argparse prints and exits on either, so a script that parses its command line first never opens a
connection, applies a migration or starts a server just to be asked what it is.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version


def package_version(package: str) -> str:
    """The installed version of ``package`` (a workspace member), or ``unknown``."""
    try:
        return version(package)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def add_version(parser: argparse.ArgumentParser, package: str) -> argparse.ArgumentParser:
    """Give ``parser`` a ``--version`` printing ``<prog> <version of package>``."""
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {package_version(package)}"
    )
    return parser


def parse_plain(
    prog: str, description: str, package: str = "common", argv: list[str] | None = None
) -> argparse.Namespace:
    """The command line of a script that takes no arguments, only ``--help`` and ``--version``
    (its settings are ``SCOREBOARD_*`` variables)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{description}; every setting is a SCOREBOARD_* environment variable",
    )
    return add_version(parser, package).parse_args(argv)
