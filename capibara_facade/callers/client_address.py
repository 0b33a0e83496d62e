"""The client address a public (keyless) request is limited by.

Behind nginx every TCP peer is nginx, so the address must come from `X-Forwarded-For` / `X-Real-IP`; but
only when the peer is one of `server.trusted_proxies`: from anyone else those headers are ignored, or a
client could pick a fresh address for every request. In `X-Forwarded-For` the rightmost address that is
not itself a trusted proxy is the client's (each proxy appends the peer it saw; a client can only prepend).
IPv6 clients are counted per network (`public.ipv6_prefix`, /64 by default): one host usually owns a /64.
"""

from __future__ import annotations

import ipaddress

__all__ = ["ClientAddress"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClientAddress:
    def __init__(self, trusted_proxies: tuple[str, ...], ipv6_prefix: int) -> None:
        self._trusted = tuple(ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies)
        self._ipv6_prefix = ipv6_prefix

    def of(self, peer: str | None, forwarded_for: bytes | None, real_ip: bytes | None) -> str:
        """The address to count a request against: the peer's, or the one a trusted proxy reports."""
        address = _parse(peer)
        if address is None:
            return "unknown"
        if self._trusted and self._is_trusted(address):
            address = self._forwarded(forwarded_for, real_ip) or address
        return self._counted_as(address)

    def _forwarded(self, forwarded_for: bytes | None, real_ip: bytes | None) -> IPAddress | None:
        if forwarded_for:
            for hop in reversed(forwarded_for.decode("latin-1").split(",")):
                hop_address = _parse(hop.strip())
                if hop_address is None:
                    break  # garbage: nothing to its left can be believed either
                if not self._is_trusted(hop_address):
                    return hop_address
        return _parse(real_ip.decode("latin-1").strip()) if real_ip else None

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._trusted)

    def _counted_as(self, address: IPAddress) -> str:
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((address, self._ipv6_prefix), strict=False))
        return str(address)


def _parse(text: str | None) -> IPAddress | None:
    """An address; an IPv4-mapped IPv6 one (a dual-stack socket's IPv4 peer) as the IPv4 address it is, so
    that `trusted_proxies = ["127.0.0.1"]` matches nginx on ::ffff:127.0.0.1 too."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
