"""Who the client is: the peer, or what a trusted proxy says in ``X-Forwarded-For``.

Rate limits, login throttling, security logs and the headers sent upstream all need the same
answer. Only the last hop of ``X-Forwarded-For`` is believed, and only from a trusted peer: it is
the one our own proxy appended; anything before it came from the client and can be forged.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_FOR = "X-Forwarded-For"

# Set by common.rejections.rejection_middleware on every request.
client_address_key = web.RequestKey("client_address", str)


@dataclass(frozen=True)
class TrustedProxies:
    """The peers whose ``X-Forwarded-For`` names the client.

    Either the networks our proxies connect from (the gateway behind a load balancer), or every
    peer (a service that only our gateway can reach, such as auth). The default trusts nobody.
    """

    networks: tuple[IpNetwork, ...] = ()
    every_peer: bool = False

    @classmethod
    def of(cls, networks: Iterable[IpNetwork | str]) -> TrustedProxies:
        """Trust peers in ``networks`` (``ip_network`` objects, or strings like ``10.0.0.0/8``)."""
        return cls(networks=tuple(ipaddress.ip_network(n) for n in networks))

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (the connection's remote address) may name the client."""
        if self.every_peer:
            return True
        if peer is None or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:  # not an IP peer (a Unix socket): nothing to match
            return False
        return any(address in net for net in self.networks)


def resolve_client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: TrustedProxies
) -> str:
    """The client's address: the last ``X-Forwarded-For`` hop if ``peer`` is trusted, else the peer.

    ``forwarded_for`` holds every ``X-Forwarded-For`` header value (each may list several hops).
    An unparsable last hop is logged and ignored; ``"unknown"`` when there is no peer either.
    """
    if forwarded_for and trusted.trusts(peer):
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
        hops = [hop for hop in hops if hop]
        if hops:
            try:
                return str(ipaddress.ip_address(hops[-1]))
            except ValueError:
                log.warning("forwarded_for_unparsable", value=hops[-1][:64])
    return peer or "unknown"


# Kept per address: parsing and printing it was about 4% of the gateway's CPU per board read
# (py-spy), and the same few clients ask again and again. Bounded, as addresses come from outside.
@functools.lru_cache(maxsize=4096)
def address_bucket(address: str) -> str:
    """The unit a per-address limit counts: an IPv4 address (also when IPv4-mapped), or an IPv6
    /64 (what one host or subscriber usually holds); anything unparsable counts as itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def request_client_address(request: web.Request, trusted: TrustedProxies) -> str:
    """:func:`resolve_client_address` for ``request`` (computed anew on each call)."""
    forwarded_for = request.headers.getall(FORWARDED_FOR, [])
    return resolve_client_address(request.remote, forwarded_for, trusted)
