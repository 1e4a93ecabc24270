"""Action hashes: bound to every signed field, constant-time checked, rotating keys."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.settings import Settings
from gateway.tickets import Ticket, TicketSigner, isoformat


def _signer(keys: str, version: int = 2) -> TicketSigner:
    return TicketSigner(Settings.load(action_hmac_keys=keys).action_hmac_keys, version=version)


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
    ("version", "change"),
    [
        (2, {"action_id": uuid.uuid4()}),
        (2, {"user_id": uuid.uuid4()}),
        (2, {"action_type": "tap"}),
        (1, {"action_id": uuid.uuid4()}),
        (1, {"user_id": uuid.uuid4()}),
        (1, {"action_type": "tap"}),
        (1, {"issued_at": datetime(2026, 1, 2, 3, 4, 5, 679000, tzinfo=UTC)}),
    ],
)
def test_every_signed_field_is_bound(version: int, change: dict[str, object]) -> None:
    signer, ticket = _signer(OLD, version), _ticket()
    action_hash = signer.sign(ticket)
    assert signer.verify(action_hash, ticket)
    assert not signer.verify(action_hash, replace(ticket, **change))  # type: ignore[arg-type]


def test_version_2_hashes_verify_from_the_completion_alone() -> None:
    ticket = _ticket()
    v2, v1 = _signer(OLD).sign(ticket), _signer(OLD, 1).sign(ticket)
    signer = _signer(OLD)
    assert v2 != v1
    assert signer.verify_completion(v2, ticket.action_id, ticket.user_id, ticket.action_type)
    assert not signer.verify_completion(v2, ticket.action_id, ticket.user_id, "tap")
    assert not signer.verify_completion(v2, uuid.uuid4(), ticket.user_id, ticket.action_type)
    # A version-1 hash (issued before an upgrade) cannot be checked without the stored ticket,
    # but still verifies against it.
    assert not signer.verify_completion(v1, ticket.action_id, ticket.user_id, ticket.action_type)
    assert signer.verify(v1, ticket)


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
