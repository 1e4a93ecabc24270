"""Who the client is: a trusted peer's last X-Forwarded-For hop, otherwise the peer itself."""

from __future__ import annotations

import ipaddress

import pytest
from aiohttp.test_utils import make_mocked_request
from structlog.testing import capture_logs

from common.addresses import TrustedProxies, request_client_address, resolve_client_address

PROXIES = TrustedProxies.of(["10.0.0.0/8", "fd00::/8"])
EVERYONE = TrustedProxies(every_peer=True)
NOBODY = TrustedProxies()


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("10.0.0.5", ["203.0.113.9"], NOBODY, "10.0.0.5"),  # untrusted peer: header ignored
        ("10.0.0.5", ["1.1.1.1, 203.0.113.9"], PROXIES, "203.0.113.9"),  # only the last hop
        ("10.0.0.5", ["1.1.1.1", "203.0.113.9"], PROXIES, "203.0.113.9"),  # over two headers
        ("10.0.0.5", ["203.0.113.9, "], PROXIES, "203.0.113.9"),  # empty hops are skipped
        ("fd00::1", ["2001:db8::0:1"], PROXIES, "2001:db8::1"),  # normalised
        ("10.0.0.5", ["garbage"], PROXIES, "10.0.0.5"),
        ("10.0.0.5", [], PROXIES, "10.0.0.5"),
        ("192.0.2.1", ["203.0.113.9"], PROXIES, "192.0.2.1"),  # peer outside the networks
        ("unix-socket", ["203.0.113.9"], PROXIES, "unix-socket"),  # not an IP: not trusted
        (None, ["203.0.113.9"], PROXIES, "unknown"),
        (None, [], NOBODY, "unknown"),
        ("192.0.2.1", ["6.6.6.6, 203.0.113.9"], EVERYONE, "203.0.113.9"),
        (None, ["203.0.113.9"], EVERYONE, "203.0.113.9"),
        ("192.0.2.1", ["garbage"], EVERYONE, "192.0.2.1"),
    ],
)
def test_resolve_client_address(
    peer: str | None, forwarded: list[str], trusted: TrustedProxies, expected: str
) -> None:
    assert resolve_client_address(peer, forwarded, trusted) == expected


def test_trusted_networks_accept_strings_and_networks() -> None:
    nets = TrustedProxies.of([ipaddress.ip_network("10.0.0.0/8"), "192.168.0.0/16"])
    assert nets.trusts("10.1.2.3")
    assert nets.trusts("192.168.1.1")
    assert not nets.trusts("172.16.0.1")
    assert not nets.trusts(None)
    assert EVERYONE.trusts(None)
    assert not NOBODY.trusts("10.1.2.3")


def test_an_unparsable_last_hop_is_logged_and_the_peer_used() -> None:
    with capture_logs() as logs:
        assert resolve_client_address("10.0.0.5", ["1.1.1.1, " + "x" * 100], PROXIES) == "10.0.0.5"
    assert logs[0]["event"] == "forwarded_for_unparsable"
    assert len(logs[0]["value"]) == 64


def test_request_client_address_reads_every_forwarded_for_header() -> None:
    request = make_mocked_request(
        "GET", "/", headers=[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.9")]
    )
    assert request_client_address(request, EVERYONE) == "203.0.113.9"
    assert request_client_address(request, NOBODY) == "unknown"  # a mocked request has no peer
