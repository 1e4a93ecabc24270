"""Action hashes: bound to every signed field, constant-time checked, rotating keys."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.settings import Settings
from gateway.signing import TicketSigner
from gateway.tickets import Ticket
from gateway.timestamps import isoformat


def _signer(keys: str) -> TicketSigner:
    return TicketSigner(Settings.load(action_hmac_keys=keys).action_hmac_keys)


def _verify(signer: TicketSigner, action_hash: str, ticket: Ticket) -> bool:
    return signer.verify(action_hash, ticket.action_id, ticket.user_id, ticket.action_type)


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
    assert _verify(signer, action_hash, ticket)


@pytest.mark.parametrize(
    "change",
    [
        {"action_id": uuid.uuid4()},
        {"user_id": uuid.uuid4()},
        {"action_type": "tap"},
    ],
)
def test_every_signed_field_is_bound(change: dict[str, object]) -> None:
    signer, ticket = _signer(OLD), _ticket()
    action_hash = signer.sign(ticket)
    assert _verify(signer, action_hash, ticket)
    assert not _verify(signer, action_hash, replace(ticket, **change))  # type: ignore[arg-type]


def test_the_issue_time_is_not_signed_the_server_keeps_it() -> None:
    signer, ticket = _signer(OLD), _ticket()
    later = replace(ticket, issued_at=ticket.issued_at + timedelta(seconds=1))
    assert signer.sign(ticket) == signer.sign(later)


def test_the_signed_type_tells_a_hash_for_another_type_from_a_forgery() -> None:
    signer, ticket = _signer(OLD), _ticket()
    action_hash = signer.sign(ticket)
    known = ("daily_login", "quest", "tap")
    args = (ticket.action_id, ticket.user_id)
    assert signer.signed_type(action_hash, *args, "quest", known) == "quest"
    assert signer.signed_type(action_hash, *args, "tap", known) == "quest"
    assert signer.signed_type(action_hash, *args, "tap", ("tap",)) is None
    assert signer.signed_type("k1." + "0" * 64, *args, "quest", known) is None


def test_rotation_new_key_signs_old_key_still_verifies() -> None:
    ticket = _ticket()
    issued_before = _signer(OLD).sign(ticket)
    rotated = _signer(f"{NEW},{OLD}")
    assert rotated.sign(ticket).startswith("k2.")
    assert _verify(rotated, issued_before, ticket)
    # Once the old key is removed, its hashes stop verifying.
    assert not _verify(_signer(NEW), issued_before, ticket)


@pytest.mark.parametrize("forged", ["", "k1", "k1.", "nokey", "k9.00", "k1." + "0" * 64])
def test_malformed_or_foreign_hashes_fail(forged: str) -> None:
    assert not _verify(_signer(OLD), forged, _ticket())


def test_timestamps_have_one_canonical_form() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert isoformat(moment) == "2026-01-02T03:04:05.678Z"
    assert datetime.fromisoformat(isoformat(moment)) == moment
