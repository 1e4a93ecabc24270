"""The board's order in Redis members: the same as PostgreSQL's (score, reached_at, user id)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from broadcaster.standings import member_for, user_of_member

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_member_round_trips_and_orders_like_postgres() -> None:
    a, b = uuid.UUID(int=1), uuid.UUID(int=2)
    assert user_of_member(member_for(a, T0)) == a
    # Descending members = ascending (reached_at, user_id).
    members = [member_for(b, T0), member_for(a, T0 + timedelta(seconds=1)), member_for(a, T0)]
    assert sorted(members, reverse=True) == [members[2], members[0], members[1]]
