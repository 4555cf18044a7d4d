"""The shared value parsers (config/values.py): one per kind of value, used by the config's
handlers and, through them, by pushed options."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.config import values
from miragevpn.config.lexer import Directive, lex
from miragevpn.errors import ConfigError


def directive(line: str) -> Directive:
    (d,) = lex(line)
    return d


def refused(parse: object, line: str, arg: int, fragment: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(directive(line), arg)  # type: ignore[operator]
    assert fragment in info.value.message, info.value.message
    return info.value


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1.2.3.4;rm", "not an IP address"),
        ("$(reboot)", "not an IP address"),
        ("fe80::1%eth0", "scope id"),
        ("fe80::1%$(reboot)", "scope id"),
        ("255.255.255.255", "broadcast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("224.0.0.251", "multicast"),
        ("ff02::fb", "multicast"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_dns_server_refuses(text: str, fragment: str) -> None:
    refused(values.dns_server, f"dhcp-option DNS {text}", 1, fragment)


def test_dns_server_canonical_text() -> None:
    assert values.dns_server(directive("dhcp-option DNS 2001:DB8:0::53"), 1) == "2001:db8::53"
    assert values.dns_server(directive("dhcp-option DNS 10.8.0.1"), 1) == "10.8.0.1"
    refused(
        lambda d, a: values.dns_server(d, a, ipv6_only=True),
        "dhcp-option DNS6 10.8.0.1",
        1,
        "not an IPv6 address",
    )


@pytest.mark.parametrize(
    "text", ["x; rm -rf /", "$(reboot)", "a..b", "../../etc", "a/b", "-", "a" * 64, "é.example"]
)
def test_domain_name_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        values.domain_name(Directive("dhcp-option", lex(f"x DOMAIN {text!r}")[0].args[1:], 1, 1), 0)


@pytest.mark.parametrize("text", ["example.com", "example.com.", "corp_ad.example", "a-b.c"])
def test_domain_name_accepts(text: str) -> None:
    assert values.domain_name(directive(f"dhcp-option DOMAIN {text}"), 1) == text


@pytest.mark.parametrize(
    ("mask", "prefix"),
    [
        ("255.255.255.255", 32),
        ("255.255.255.0", 24),
        ("128.0.0.0", 1),
        ("0.0.0.0", 0),
        ("0.255.255.255", None),  # a host mask: Python's ipaddress would read /8
        ("255.0.255.0", None),
        ("255.255.255.254", 31),
    ],
)
def test_netmask_prefix_contiguous_only(mask: str, prefix: int | None) -> None:
    assert values.netmask_prefix(ipaddress.IPv4Address(mask)) == prefix


@given(st.integers(0, 32))
def test_netmask_prefix_inverts_every_prefix(prefix: int) -> None:
    mask = ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask
    assert values.netmask_prefix(mask) == prefix


def test_metric_one_bound() -> None:
    assert values.metric(directive("route 10.0.0.0 255.0.0.0 default 65535"), 3) == 65535
    assert values.metric(directive("route 10.0.0.0 255.0.0.0 default default"), 3) is None
    refused(values.metric, "route 10.0.0.0 255.0.0.0 default 2147483647", 3, "out of range")
    assert values.ROUTE_METRIC_MAX == 0xFFFF


def test_integer_with_thousands_of_digits_is_out_of_range() -> None:
    refused(values.integer, "tun-mtu " + "9" * 5000, 0, "out of range")
    assert values.integer(directive("tun-mtu 0001500"), 0, hi=65535) == 1500


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("2001:db8:9::2/0", "shorter than /64"),
        ("2001:db8:9::2/48", "shorter than /64"),
        ("fe80::1%eth0/64", "scope id"),
        ("::1/128", "loopback"),
        ("ff02::1/64", "multicast"),
        ("::/64", "unspecified"),
    ],
)
def test_tunnel_ipv6_refuses(text: str, fragment: str) -> None:
    refused(values.tunnel_ipv6, f"ifconfig-ipv6 {text}", 0, fragment)


def test_tunnel_ipv6_accepts_64_and_longer() -> None:
    for text in ("2001:db8::2/64", "fd00::1000/112"):
        assert str(values.tunnel_ipv6(directive(f"ifconfig-ipv6 {text}"), 0)) == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("224.0.0.1", "multicast"), ("127.0.0.2", "loopback"), ("0.0.0.0", "unspecified")],
)
def test_tunnel_ipv4_refuses(text: str, fragment: str) -> None:
    refused(values.tunnel_ipv4, f"ifconfig {text} 255.255.255.0", 0, fragment)


def test_ipv6_values_refuse_scope_ids() -> None:
    refused(values.ipv6_network, "route-ipv6 fe80::%eth0/64", 0, "scope id")
    refused(values.ipv6, "route-ipv6 fd00::/64 fe80::1%eth0", 1, "scope id")


def test_base64_text() -> None:
    assert values.base64_text(directive("auth-token-user Ym9i"), 0) == "bob"
    refused(values.base64_text, "auth-token-user !!!", 0, "not base64")
    refused(values.base64_text, "auth-token-user //8=", 0, "not base64")  # not UTF-8
