"""Action hashes: bound to every signed field, constant-time checked, rotating keys."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.settings import Settings
from gateway.tickets import Ticket, TicketSigner, isoformat


def _signer(keys: str) -> TicketSigner:
    return TicketSigner(Settings.load(action_hmac_keys=keys).action_hmac_keys)


def _ticket() -> Ticket:
    issued = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    return Ticket(uuid.uuid4(), uuid.uuid4(), "quest", issued, issued + timedelta(minutes=10))


OLD = "k1:old-secret-0123456789abcdef"
NEW = "k2:new-secret-0123456789abcdef"


def test_hash_names_its_key_and_verifies() -> None:
    signer, ticket = _signer(OLD), _ticket()
    action_hash = signer.sign(ticket)
    assert action_hash.startswith("k1.")
    assert len(action_hash.split(".")[1]) == 64
    assert signer.verify(action_hash, ticket)


@pytest.mark.parametrize(
    "change",
    [
        {"action_id": uuid.uuid4()},
        {"user_id": uuid.uuid4()},
        {"action_type": "tap"},
        {"issued_at": datetime(2026, 1, 2, 3, 4, 5, 679000, tzinfo=UTC)},
    ],
)
def test_every_signed_field_is_bound(change: dict[str, object]) -> None:
    signer, ticket = _signer(OLD), _ticket()
    action_hash = signer.sign(ticket)
    assert not signer.verify(action_hash, replace(ticket, **change))  # type: ignore[arg-type]


def test_rotation_new_key_signs_old_key_still_verifies() -> None:
    ticket = _ticket()
    issued_before = _signer(OLD).sign(ticket)
    rotated = _signer(f"{NEW},{OLD}")
    assert rotated.sign(ticket).startswith("k2.")
    assert rotated.verify(issued_before, ticket)
    # Once the old key is removed, its hashes stop verifying.
    assert not _signer(NEW).verify(issued_before, ticket)


@pytest.mark.parametrize("forged", ["", "k1", "k1.", "nokey", "k9.00", "k1." + "0" * 64])
def test_malformed_or_foreign_hashes_fail(forged: str) -> None:
    assert not _signer(OLD).verify(forged, _ticket())


def test_timestamps_have_one_canonical_form() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert isoformat(moment) == "2026-01-02T03:04:05.678Z"
    assert datetime.fromisoformat(isoformat(moment)) == moment
