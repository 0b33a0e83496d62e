"""The address a keyless request is limited by: the TCP peer's, unless the peer is a trusted proxy, whose
X-Forwarded-For (its rightmost address that is not itself a trusted proxy) or X-Real-IP is believed; IPv6
clients are counted per network."""

from __future__ import annotations

import pytest

from capibara_facade.callers.client_address import ClientAddress

NGINX = "127.0.0.1"
BEHIND_NGINX = ClientAddress(("127.0.0.1", "10.0.0.0/8"), ipv6_prefix=64)


def test_without_trusted_proxies_the_headers_are_ignored_and_the_peer_counts() -> None:
    open_to_all = ClientAddress((), ipv6_prefix=64)
    assert open_to_all.of("198.51.100.7", b"203.0.113.9", b"203.0.113.10") == "198.51.100.7"


def test_a_peer_that_is_not_a_trusted_proxy_cannot_choose_its_address() -> None:
    assert BEHIND_NGINX.of("198.51.100.7", b"203.0.113.9", b"203.0.113.10") == "198.51.100.7"


def test_behind_a_trusted_proxy_the_client_is_the_address_it_appended() -> None:
    assert BEHIND_NGINX.of(NGINX, b"203.0.113.9", None) == "203.0.113.9"


def test_addresses_a_client_put_in_front_of_the_proxys_are_ignored() -> None:
    # The client sent "X-Forwarded-For: 1.2.3.4, 5.6.7.8"; nginx appended the address it saw.
    assert BEHIND_NGINX.of(NGINX, b"1.2.3.4, 5.6.7.8, 203.0.113.9", None) == "203.0.113.9"


def test_a_chain_of_trusted_proxies_is_walked_back_to_the_first_untrusted_hop() -> None:
    # A load balancer (10.0.0.5) in front of nginx: both appended.
    assert BEHIND_NGINX.of(NGINX, b"6.6.6.6, 203.0.113.9, 10.0.0.5", None) == "203.0.113.9"


def test_several_forwarded_for_headers_read_as_one_list() -> None:
    # The exchange joins repeated headers with a comma, in order.
    assert BEHIND_NGINX.of(NGINX, b"6.6.6.6,203.0.113.9", None) == "203.0.113.9"


def test_nothing_left_of_a_hop_that_is_not_an_address_is_believed() -> None:
    assert BEHIND_NGINX.of(NGINX, b"203.0.113.9, bogus", b"203.0.113.20") == "203.0.113.20"
    assert BEHIND_NGINX.of(NGINX, b"203.0.113.9, bogus", None) == NGINX


def test_x_real_ip_counts_when_a_trusted_proxy_sends_no_forwarded_for() -> None:
    assert BEHIND_NGINX.of(NGINX, None, b" 203.0.113.9 ") == "203.0.113.9"
    assert BEHIND_NGINX.of(NGINX, b"10.0.0.5", b"203.0.113.9") == "203.0.113.9"  # every forwarded hop is trusted


def test_a_trusted_proxy_that_reports_nothing_usable_counts_as_itself() -> None:
    assert BEHIND_NGINX.of(NGINX, None, None) == NGINX
    assert BEHIND_NGINX.of(NGINX, b"", b"not-an-address") == NGINX


@pytest.mark.parametrize(
    ("one", "other", "prefix", "same"),
    [
        ("2001:db8:1:2::7", "2001:db8:1:2:ffff::1", 64, True),
        ("2001:db8:1:2::7", "2001:db8:1:3::7", 64, False),
        ("2001:db8:1:2::7", "2001:db8:1:2::8", 128, False),
    ],
)
def test_ipv6_clients_are_counted_per_network_of_the_configured_prefix(
    one: str, other: str, prefix: int, same: bool
) -> None:
    counted = ClientAddress((), ipv6_prefix=prefix)
    assert (counted.of(one, None, None) == counted.of(other, None, None)) is same


def test_an_ipv6_network_is_named_in_cidr_form() -> None:
    assert ClientAddress((), ipv6_prefix=64).of("2001:db8:1:2::7", None, None) == "2001:db8:1:2::/64"


def test_an_ipv4_mapped_peer_is_its_ipv4_address_and_trusted_as_such() -> None:
    # A dual-stack listener ("::") sees nginx on 127.0.0.1 as ::ffff:127.0.0.1.
    assert BEHIND_NGINX.of("::ffff:127.0.0.1", b"203.0.113.9", None) == "203.0.113.9"
    assert BEHIND_NGINX.of("::ffff:198.51.100.7", b"203.0.113.9", None) == "198.51.100.7"


def test_a_forwarded_ipv6_client_is_counted_per_network_too() -> None:
    assert BEHIND_NGINX.of(NGINX, b"2001:db8:1:2::7", None) == "2001:db8:1:2::/64"


def test_a_request_without_a_peer_address_counts_as_unknown() -> None:
    # A Unix socket: no address at all (and every such request shares one count).
    assert BEHIND_NGINX.of(None, b"203.0.113.9", None) == "unknown"
