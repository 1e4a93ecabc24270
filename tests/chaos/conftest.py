"""The chaos short variant's marker."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """``chaos``: bench/chaos.py on a private stack under faults (``-m "not chaos"`` skips it)."""
    config.addinivalue_line(
        "markers", "chaos: the short variant of `make chaos` (bench/chaos.py, a private stack)"
    )
