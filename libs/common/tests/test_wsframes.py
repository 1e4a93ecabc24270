"""The WebSocket frame codec against RFC 6455's own examples, and fed the way sockets feed it."""

from __future__ import annotations

import base64

import pytest

from common.wsframes import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    FrameError,
    MaskingError,
    ReservedBitsError,
    TooLarge,
    accept_key,
    apply_mask,
    decode_close,
    encode_close,
    encode_frame,
    handshake_key,
    iter_frames,
    read_frames,
    upgrade_request,
)

# RFC 6455 section 5.7
HELLO = bytes.fromhex("810548656c6c6f")
HELLO_MASKED = bytes.fromhex("818537fa213d7f9f4d5158")
HEL_LO = bytes.fromhex("010348656c") + bytes.fromhex("80026c6f")
PING_HELLO = bytes.fromhex("890548656c6c6f")


def test_the_rfc_examples_decode() -> None:
    assert read_frames(bytearray(HELLO)) == [Frame(True, OP_TEXT, b"Hello")]
    assert read_frames(bytearray(HELLO_MASKED), masked=True) == [Frame(True, OP_TEXT, b"Hello")]
    assert read_frames(bytearray(HEL_LO)) == [
        Frame(False, OP_TEXT, b"Hel"),
        Frame(True, OP_CONTINUATION, b"lo"),
    ]
    assert read_frames(bytearray(PING_HELLO)) == [Frame(True, OP_PING, b"Hello")]


def test_unmasked_frames_encode_as_in_the_rfc() -> None:
    assert encode_frame(OP_TEXT, b"Hello") == HELLO
    assert encode_frame(OP_TEXT, b"Hel", fin=False) + encode_frame(OP_CONTINUATION, b"lo") == HEL_LO
    assert encode_frame(OP_PING, b"Hello") == PING_HELLO
    assert encode_frame(OP_BINARY, bytes(256))[:4] == bytes.fromhex("827e0100")
    assert encode_frame(OP_BINARY, bytes(65536))[:10] == bytes.fromhex("827f0000000000010000")


def test_masking_is_the_rfc_xor_and_undoes_itself() -> None:
    key = HELLO_MASKED[2:6]
    assert apply_mask(key, b"Hello") == HELLO_MASKED[6:]
    assert apply_mask(key, apply_mask(key, b"x" * 1001)) == b"x" * 1001
    assert apply_mask(key, b"") == b""


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("mask", [False, True])
def test_every_length_form_round_trips(size: int, mask: bool) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = encode_frame(OP_BINARY, payload, mask=mask)
    head = 2 if size < 126 else 4 if size < 65536 else 10
    assert len(frame) == head + (4 if mask else 0) + size
    assert frame[1] & 0x80 == (0x80 if mask else 0)
    assert frame[1] & 0x7F == (size if size < 126 else 126 if size < 65536 else 127)
    assert read_frames(bytearray(frame), masked=mask) == [Frame(True, OP_BINARY, payload)]


def test_a_masked_frame_hides_its_payload_under_a_fresh_key() -> None:
    first, second = (
        encode_frame(OP_TEXT, b"secret!!", mask=True),
        encode_frame(OP_TEXT, b"secret!!", mask=True),
    )
    assert first[2:6] != second[2:6]  # 32 random bits each: equal once in 4 billion
    assert first[6:] == apply_mask(first[2:6], b"secret!!")


def test_frames_fed_byte_by_byte_come_out_whole_and_in_order() -> None:
    frames = [
        Frame(True, OP_TEXT, b"a" * 10),
        Frame(False, OP_TEXT, b"b" * 300),
        Frame(True, OP_PING, b""),
        Frame(True, OP_CONTINUATION, b"c" * 70000),
        Frame(True, OP_CLOSE, encode_close(1000)),
    ]
    wire = b"".join(encode_frame(f.opcode, f.payload, fin=f.fin) for f in frames)
    buf, got, done_at = bytearray(), [], []
    for i in range(len(wire)):
        buf += wire[i : i + 1]
        more = read_frames(buf)
        got += more
        done_at += [i + 1] * len(more)
    assert got == frames
    assert buf == b""
    ends, at = [], 0
    for f in frames:
        at += len(encode_frame(f.opcode, f.payload, fin=f.fin))
        ends.append(at)
    assert done_at == ends  # each frame as soon as its last byte arrived, not before


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 150, 303])
def test_a_frame_split_across_reads_waits_for_its_rest(cut: int) -> None:
    frame = encode_frame(OP_TEXT, b"m" * 300)  # a 16-bit length: a 4-byte header
    buf = bytearray(frame[:cut])
    assert read_frames(buf) == []
    assert buf == frame[:cut]  # nothing taken off
    buf += frame[cut:] + frame[:1]
    assert read_frames(buf) == [Frame(True, OP_TEXT, b"m" * 300)]
    assert buf == frame[:1]  # the next frame's start stays


def test_offsets_find_frame_boundaries_without_copying() -> None:
    wire = encode_frame(OP_TEXT, b"one") + encode_frame(OP_BINARY, b"t" * 200) + b"\x81\x05Hel"
    found = list(iter_frames(wire))
    assert found == [(0x81, 2, 5), (0x82, 9, 209)]
    assert wire[2:5] == b"one"
    assert wire[9:209] == b"t" * 200
    assert list(iter_frames(wire, 5)) == [(0x82, 9, 209)]  # from a frame's start
    masked = encode_frame(OP_TEXT, b"Hello", mask=True)
    [(first, start, end)] = iter_frames(masked, masked=True)
    assert (first, start, end) == (0x81, 6, 11)  # the key is the 4 bytes before the payload
    assert apply_mask(masked[start - 4 : start], masked[start:end]) == b"Hello"


def test_wrong_masking_is_refused_from_the_header_alone() -> None:
    with pytest.raises(MaskingError, match="the server sent a masked frame"):
        list(iter_frames(b"\x81\x85"))
    with pytest.raises(MaskingError, match="the client sent an unmasked frame"):
        list(iter_frames(HELLO, masked=True))


def test_reserved_bits_are_refused_unless_frames_are_only_passed_on() -> None:
    with pytest.raises(ReservedBitsError, match="reserved bits"):
        list(iter_frames(b"\xc1\x01x"))
    assert list(iter_frames(b"\xc1\x01x", reserved_bits=True)) == [(0xC1, 2, 3)]


def test_a_frame_over_the_limit_is_refused_before_its_payload_arrives() -> None:
    with pytest.raises(TooLarge, match="frame of 70000 bytes, over the 65536 limit") as caught:
        list(iter_frames(encode_frame(OP_BINARY, bytes(70000))[:10], max_size=65536))
    assert caught.value.close_code == CLOSE_TOO_BIG
    assert list(iter_frames(encode_frame(OP_BINARY, bytes(100)), max_size=100)) == [(0x82, 2, 102)]


def test_framing_errors_close_with_a_protocol_error() -> None:
    assert issubclass(MaskingError, FrameError)
    assert issubclass(ReservedBitsError, FrameError)
    assert issubclass(TooLarge, FrameError)
    assert MaskingError("x").close_code == CLOSE_PROTOCOL_ERROR


def test_close_payloads() -> None:
    assert encode_close(1000) == b"\x03\xe8"
    assert encode_close(4008, "too slow") == b"\x0f\xa8too slow"
    assert encode_close(4008, b"too slow") == b"\x0f\xa8too slow"
    assert decode_close(b"\x0f\xa8too slow") == (4008, "too slow")
    assert decode_close(bytearray(b"\x03\xe8")) == (1000, "")
    assert decode_close(b"") == (None, "")  # a close without a code
    assert decode_close(b"\x03") == (None, "")  # malformed: the receiver decides what to do
    assert decode_close(b"\x03\xe8\xff") == (1000, "\ufffd")


def test_a_long_close_reason_is_cut_to_fit_a_control_frame() -> None:
    payload = encode_close(1000, "r" * 300)
    assert len(payload) == 125
    assert read_frames(bytearray(encode_frame(OP_CLOSE, payload))) == [
        Frame(True, OP_CLOSE, payload)
    ]


def test_an_empty_pong_from_a_client() -> None:
    frame = encode_frame(OP_PONG, mask=True)
    assert frame[:2] == b"\x8a\x80"
    assert len(frame) == 6
    assert read_frames(bytearray(frame), masked=True) == [Frame(True, OP_PONG, b"")]


def test_the_handshake_keys() -> None:
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # section 1.3
    key = handshake_key()
    assert len(base64.b64decode(key, validate=True)) == 16
    assert key != handshake_key()


def test_the_upgrade_request() -> None:
    request = upgrade_request(
        "h:1", "/ws", b"a2V5", {"Authorization": "Bearer t"}, protocols=["one", "two"]
    )
    assert request == (
        b"GET /ws HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: a2V5\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: one, two\r\nAuthorization: Bearer t\r\n\r\n"
    )
    assert upgrade_request("h", "/", b"a2V5").endswith(b"Sec-WebSocket-Version: 13\r\n\r\n")
