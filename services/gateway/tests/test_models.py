"""Request parsing at the edge: the Prefer header (RFC 7240)."""

from __future__ import annotations

import pytest

from gateway.models import InvalidPreference, prefer_wait


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        (["respond-async"], None),
        (["wait=5"], 5),
        (["respond-async, wait=10"], 10),
        (["Wait = 3"], 3),
        (['wait="2"'], 2),
        (["handling=lenient", "wait=1;x=y"], 1),
        (["wait=4, wait=9"], 4),
    ],
)
def test_wait_is_read(headers: list[str], expected: int | None) -> None:
    assert prefer_wait(headers) == expected


@pytest.mark.parametrize("value", ["wait=0", "wait=11", "wait=-1", "wait=1.5", "wait", "wait=²"])
def test_invalid_wait_is_refused(value: str) -> None:
    with pytest.raises(InvalidPreference):
        prefer_wait([value])
