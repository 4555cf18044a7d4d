"""`format_config` writes what `parse_config` reads back as the same model (issue 8 finding 12:
`--inline` wrote `connect-retry 2147483647` as `connect-retry 65535 300`, which reads back with
another maximum delay). The Hypothesis test writes config text with every numeric directive at
values across and beyond its range (the extremes included) and checks the round trip of each
config the parser accepts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miragevpn.config import Config, format_config, parse_config
from miragevpn.errors import ConfigError

BASE = (
    "client\ndev tun\nremote vpn.example.org\nauth-user-pass\n"
    "peer-fingerprint " + ":".join(["AB"] * 32) + "\n"
)
EXTREMES = [0, 1, 2, 67, 68, 255, 256, 1500, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**63 - 1]
NUMBER = st.one_of(st.sampled_from(EXTREMES), st.integers(0, 70000), st.integers(0, 2**64)).map(
    str
) | st.sampled_from(["-1", "1.5", "0x10", "infinite", ""])

# directive -> how many numeric arguments it takes (a range: fewer are tried too)
NUMERIC = {
    "tun-mtu": 2,
    "link-mtu": 1,
    "mssfix": 2,
    "ping": 1,
    "ping-restart": 1,
    "ping-exit": 1,
    "hand-window": 1,
    "tran-window": 1,
    "tls-timeout": 1,
    "connect-timeout": 1,
    "server-poll-timeout": 1,
    "reneg-bytes": 1,
    "reneg-pkts": 1,
    "reneg-sec": 2,
    "connect-retry": 2,
    "connect-retry-max": 1,
    "resolv-retry": 1,
    "explicit-exit-notify": 1,
    "keepalive": 2,
    "route-metric": 1,
    "route-delay": 2,
    "replay-window": 2,
    "lport": 1,
    "port": 1,
}
OTHER = st.sampled_from(
    [
        "route 10.0.0.0 255.0.0.0",
        "route 10.1.0.0 255.255.0.0 vpn_gateway",
        "route 10.2.0.0 255.255.255.0 default 4",
        "route-ipv6 2001:db8::/32",
        "route-ipv6 2001:db8:1::/48 default 65535",
        "redirect-gateway def1 bypass-dhcp",
        "topology subnet",
        "ifconfig 10.8.0.2 255.255.255.0",
        "ifconfig-ipv6 2001:db8::2/64 2001:db8::1",
        "remote b.example.org 443 tcp",
        "proto tcp-client",
        "rport 1",
        "comp-lzo no",
        "compress",
        "allow-compression asym",
        "cipher AES-128-CBC",
        "data-ciphers AES-128-GCM",
        "auth SHA512",
        "dhcp-option DNS 10.8.0.1",
        "pull-filter ignore route",
        "route-nopull",
        "block-ipv6",
        "remote 2001:db8::1 1194 udp6",
        "remote 192.0.2.1 443 tcp4-client",
        "remote-cert-tls server",
        "tls-version-min 1.2 or-highest",
        "auth-retry nointeract",
        'static-challenge "Enter the code: \\"6 digits\\"" 1',
        "float",
        "nobind",
    ]
)


@st.composite
def numeric_lines(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(sorted(NUMERIC)))
    count = draw(st.integers(1, NUMERIC[name]))
    return " ".join([name, *(draw(NUMBER) for _ in range(count))]).rstrip()


def no_files(path: str) -> bytes:
    raise AssertionError(f"a formatted config must be self-contained, asked for {path}")


def round_trip(config: Config) -> Config:
    return parse_config(format_config(config), read_file=no_files)


@settings(max_examples=400, deadline=None)
@given(st.lists(numeric_lines() | OTHER, min_size=1, max_size=6))
def test_every_accepted_value_round_trips(lines: list[str]) -> None:
    text = BASE + "\n".join(lines) + "\n"
    try:
        config = parse_config(text, read_file=no_files)
    except ConfigError:
        return  # out of range: the parser's business, tested elsewhere
    assert round_trip(config) == config, format_config(config)


@pytest.mark.parametrize(
    "lines",
    [
        "connect-retry 2147483647",  # finding 12
        "connect-retry 10 20\nconnect-retry 500",
        "connect-retry 5 1",
        "connect-retry 0 2147483647",
        "reneg-bytes 9223372036854775807",
        "tun-mtu 65535\nlink-mtu 68\nmssfix 0",
        "keepalive 1073741823 2147483647",
        "replay-window 65536 2147483647",
        "route-metric 65535",
        "hand-window 2147483647",
    ],
)
def test_extremes_round_trip(lines: str) -> None:
    config = parse_config(BASE + lines + "\n", read_file=no_files)
    assert round_trip(config) == config


def test_connect_retry_keeps_its_maximum() -> None:
    config = parse_config(BASE + "connect-retry 2147483647\n", read_file=no_files)
    assert (config.connect_retry, config.connect_retry_max_delay) == (65535.0, 300.0)
    back = round_trip(config)
    assert (back.connect_retry, back.connect_retry_max_delay) == (65535.0, 300.0)
