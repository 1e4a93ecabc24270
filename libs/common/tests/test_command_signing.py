"""Command signatures: what verifies, what does not, and how keys are configured."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from common.command_signing import (
    HEADER,
    CommandKeySettings,
    CommandSigner,
    CommandVerifier,
    SignatureFailure,
    SignatureRejected,
    parse_key,
)

OLD = parse_key("k1:" + base64.b64encode(b"1" * 32).decode())
NEW = parse_key("k2:" + base64.urlsafe_b64encode(b"\xfb" * 40).decode().rstrip("="))
KEY, VALUE = b"user-1", b'{"points": 5}'


def _reason(result: SignatureRejected | str) -> SignatureFailure | str:
    return result.reason if isinstance(result, SignatureRejected) else result


def test_a_signed_record_verifies_with_its_key_id() -> None:
    header = CommandSigner(OLD).header(KEY, VALUE)
    assert header[0] == HEADER
    assert header[1].startswith(b"v1;kid=k1;")
    assert CommandVerifier([OLD]).check(KEY, VALUE, [("traceparent", b"x"), header]) == "k1"


def test_during_a_rotation_both_keys_verify_and_a_dropped_one_does_not() -> None:
    both = CommandVerifier([OLD, NEW])
    for key in (OLD, NEW):
        assert both.check(KEY, VALUE, [CommandSigner(key).header(KEY, VALUE)]) == key.key_id
    only_new = CommandVerifier([NEW])
    result = only_new.check(KEY, VALUE, [CommandSigner(OLD).header(KEY, VALUE)])
    assert _reason(result) is SignatureFailure.UNKNOWN_KEY


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (KEY, VALUE + b" "),
        (KEY, VALUE.replace(b"5", b"9")),
        (b"user-2", VALUE),
        (None, VALUE),
        (KEY, None),
        # Length prefixes: moving bytes between key and value changes the MAC.
        (KEY + b"{", VALUE[1:]),
    ],
)
def test_any_change_to_key_or_value_breaks_the_mac(key: bytes | None, value: bytes | None) -> None:
    header = CommandSigner(OLD).header(KEY, VALUE)
    result = CommandVerifier([OLD]).check(key, value, [header])
    assert _reason(result) is SignatureFailure.BAD_SIGNATURE


def test_a_null_key_and_an_empty_key_are_different_records() -> None:
    header = CommandSigner(OLD).header(None, VALUE)
    assert CommandVerifier([OLD]).check(None, VALUE, [header]) == "k1"
    assert _reason(CommandVerifier([OLD]).check(b"", VALUE, [header])) is (
        SignatureFailure.BAD_SIGNATURE
    )


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([], SignatureFailure.UNSIGNED),
        ([("X-Signature", b"v1;kid=k1;AAAA")], SignatureFailure.UNSIGNED),
        ([(HEADER, None)], SignatureFailure.BAD_SIGNATURE),
        ([(HEADER, b"")], SignatureFailure.BAD_SIGNATURE),
        ([(HEADER, b"\xff\xfe")], SignatureFailure.BAD_SIGNATURE),
        ([(HEADER, b"v2;kid=k1;AAAA")], SignatureFailure.BAD_SIGNATURE),
        ([(HEADER, b"v1;k1;AAAA")], SignatureFailure.BAD_SIGNATURE),
        ([(HEADER, b"v1;kid=k1;not*base64")], SignatureFailure.BAD_SIGNATURE),
        ([(HEADER, b"v1;kid=k1;" + b"A" * 500)], SignatureFailure.BAD_SIGNATURE),
        ([(HEADER, b"v1;kid=nope;AAAA")], SignatureFailure.UNKNOWN_KEY),
        ([(HEADER, b"v1;kid=;AAAA")], SignatureFailure.UNKNOWN_KEY),
    ],
)
def test_malformed_or_missing_headers_are_refused(
    headers: list[tuple[str, bytes | None]], reason: SignatureFailure
) -> None:
    assert _reason(CommandVerifier([OLD]).check(KEY, VALUE, headers)) is reason


def test_two_signature_headers_are_refused_even_if_one_is_valid() -> None:
    good = CommandSigner(OLD).header(KEY, VALUE)
    result = CommandVerifier([OLD]).check(KEY, VALUE, [good, (HEADER, b"v1;kid=k1;AAAA")])
    assert _reason(result) is SignatureFailure.BAD_SIGNATURE


class _Keys(CommandKeySettings):
    pass


def test_keys_are_read_from_a_comma_separated_setting() -> None:
    text = f"k1:{base64.b64encode(b'1' * 32).decode()}, k2:{base64.b64encode(b'2' * 32).decode()}"
    keys = _Keys(command_keys=text).command_keys
    assert [k.key_id for k in keys] == ["k1", "k2"]
    assert keys[1].secret.get_secret_value() == b"2" * 32
    assert _Keys().uses_dev_command_key
    assert not _Keys(command_keys=text).uses_dev_command_key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "k1",
        "k1:" + base64.b64encode(b"short").decode(),
        "k1:not base64!!",
        "bad.id:" + base64.b64encode(b"1" * 32).decode(),
        f"k1:{base64.b64encode(b'1' * 32).decode()},k1:{base64.b64encode(b'2' * 32).decode()}",
    ],
)
def test_bad_key_settings_are_refused_at_start(text: str) -> None:
    with pytest.raises(ValidationError):
        _Keys(command_keys=text)
