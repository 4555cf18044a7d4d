"""The directive handlers that read values a server may also push (addresses, routes, metrics,
dhcp-option, redirect-gateway): each hostile value from issue 8 is refused in a config file."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from miragevpn.config import parse_config
from miragevpn.config.model import Config, DhcpOption
from miragevpn.errors import ConfigError

Reader = Callable[[str], bytes]
BASE = "client\ndev tun\nremote vpn.example.org\nca ca.crt\ncert client.crt\nkey client.key\n"


def parse(line: str, read_file: Reader) -> Config:
    return parse_config(BASE + line + "\n", read_file=read_file)


def refused(line: str, read_file: Reader, fragment: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(line, read_file)
    assert fragment in info.value.message, info.value.message
    assert info.value.line == BASE.count("\n") + 1
    return info.value


# issue 8, finding 1: these passed the checker (`ipaddress` accepts any scope id)
@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('dhcp-option DNS "fe80::1%$(reboot)"', "scope id"),
        ('dhcp-option DOMAIN "x; rm -rf /"', "not a domain name"),
        ("dhcp-option DNS 255.255.255.255", "broadcast"),
        ("dhcp-option DNS 127.0.0.53", "loopback"),
        ("dhcp-option DNS6 10.8.0.1", "not an IPv6 address"),
        ("dhcp-option DOMAIN-SEARCH $(reboot)", "not a domain name"),
        ("dhcp-option ../../etc x", "unknown dhcp-option kind"),
        ("dhcp-option DNS", "needs a value"),
        ("dhcp-option DISABLE-NBT 1", "takes no value"),
        ("dhcp-option NBT 3", "expected one of 1, 2, 4, 8"),
    ],
)
def test_dhcp_option_values_are_checked(line: str, fragment: str, read_file: Reader) -> None:
    refused(line, read_file, fragment)


def test_dhcp_option_values_are_canonical(read_file: Reader) -> None:
    config = parse(
        "dhcp-option dns 2001:DB8::53\ndhcp-option DOMAIN corp.example\ndhcp-option DISABLE-NBT",
        read_file,
    )
    assert config.dhcp_options == (
        DhcpOption("DNS", "2001:db8::53"),
        DhcpOption("DOMAIN", "corp.example"),
        DhcpOption("DISABLE-NBT", None),
    )


# issue 8, finding 2: tunnel addresses
@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("ifconfig-ipv6 2001:db8:9::2/0", "shorter than /64"),
        ("ifconfig 224.0.0.1 255.255.255.0", "multicast"),
        ("ifconfig 127.0.0.2 127.0.0.1", "loopback"),
    ],
)
def test_tunnel_addresses_are_unicast_with_sane_prefixes(
    line: str, fragment: str, read_file: Reader
) -> None:
    refused(line, read_file, fragment)


# issue 8, finding 10: the host mask, metrics bounded alike, redirect-gateway flags
def test_host_mask_is_not_a_netmask(read_file: Reader) -> None:
    refused("route 10.0.0.0 0.255.255.255", read_file, "not a netmask")


def test_route_metrics_have_one_bound(read_file: Reader) -> None:
    refused("route 10.0.0.0 255.0.0.0 default 2147483647", read_file, "out of range (0..65535)")
    refused("route-ipv6 fd00::/8 default 65536", read_file, "out of range (0..65535)")
    config = parse("route 10.0.0.0 255.0.0.0 default 65535", read_file)
    assert config.routes[0].metric == 65535


def test_redirect_gateway_flags_not_applied_are_said(read_file: Reader) -> None:
    config = parse("redirect-gateway def1 block-local bypass-dns", read_file)
    assert config.redirect_gateway is not None
    said = [w.message for w in config.warnings if w.directive == "redirect-gateway"]
    assert said == [
        "redirect-gateway flag 'block-local' is not applied: "
        "the local network is not blocked by routes (the firewall decides)",
        "redirect-gateway flag 'bypass-dns' is not applied: "
        "the DNS server is not given a route of its own",
    ]
    refused("redirect-gateway def1 frobnicate", read_file, "expected one of")


@pytest.mark.parametrize(
    "line",
    [
        "route 10.0.0.0 255.0.0.0 224.0.0.1",
        "route-gateway 255.255.255.255",
        "route-ipv6 fd00::/8 ff02::1",
        "route-ipv6 fd00::/8 fe80::1%eth0",
    ],
)
def test_route_gateways_are_unicast(line: str, read_file: Reader) -> None:
    with pytest.raises(ConfigError):
        parse(line, read_file)


def test_explicit_exit_notify_is_bounded(read_file: Reader) -> None:
    refused("explicit-exit-notify 2147483647", read_file, "out of range (0..1000)")


def test_reneg_sec_max_and_min(read_file: Reader) -> None:
    """options.c: `reneg-sec max [min]`; a later `reneg-sec max` keeps the earlier min."""
    config = parse("reneg-sec 60 30", read_file)
    assert (config.reneg_sec, config.reneg_sec_min) == (60.0, 30.0)
    config = parse("reneg-sec 60", read_file)
    assert (config.reneg_sec, config.reneg_sec_min) == (60.0, None)
    config = parse("reneg-sec 60 30\nreneg-sec 90", read_file)
    assert (config.reneg_sec, config.reneg_sec_min) == (90.0, 30.0)
    config = parse("reneg-sec 0 30", read_file)
    assert (config.reneg_sec, config.reneg_sec_min) == (None, 30.0)
    refused("reneg-sec 60 soon", read_file, "not a number")
    refused("reneg-sec 60 -1", read_file, "not a number")
    refused("reneg-sec 60 30 10", read_file, "expects 1 to 2 arguments")
