"""PUSH_REPLY options: the allow-list, route-nopull, pull-filter, and the shared grammar."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.config import parse_config
from miragevpn.config.context import Outcome
from miragevpn.config.directives import TABLE
from miragevpn.config.model import (
    AllowCompression,
    Compression,
    Config,
    DhcpOption,
    PullFilter,
    PullFilterAction,
    RouteGatewayKeyword,
    Topology,
)
from miragevpn.errors import ConfigError, DecodeError, RemoteProtocolError
from miragevpn.events import TunnelSettings
from miragevpn.messages import (
    AuthPending,
    PushReply,
    PushReplyAssembler,
    parse_control_message,
    split_control_messages,
)
from miragevpn.push import FROM_CONFIG_GRAMMAR, PUSH_ONLY, parse_line, parse_pushed_options
from miragevpn.tunnelsettings import resolve_tunnel_settings

CONFIG = Config(client=True)

# The reply a 2.6 server sends for `server 10.8.0.0 255.255.255.0`, `topology subnet`,
# `keepalive 10 60` to a client with IV_PROTO bit 7 (openvpn-protocol.md §7.3).
TYPICAL = (
    "PUSH_REPLY,route-gateway 10.8.0.1,topology subnet,ping 10,ping-restart 60,"
    "ifconfig 10.8.0.2 255.255.255.0,peer-id 0,cipher AES-256-GCM,"
    "protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500"
)


def test_typical_reply() -> None:
    reply = parse_control_message(TYPICAL)
    assert isinstance(reply, PushReply)
    assert not reply.more_follows
    options = parse_pushed_options(reply.options, CONFIG)
    assert options.route_gateway == ipaddress.IPv4Address("10.8.0.1")
    assert options.topology is Topology.SUBNET
    assert options.ping == 10.0
    assert options.ping_restart == 60.0
    assert options.ifconfig is not None
    assert options.ifconfig.local == ipaddress.IPv4Address("10.8.0.2")
    assert options.ifconfig.remote_or_netmask == ipaddress.IPv4Address("255.255.255.0")
    assert options.peer_id == 0
    assert options.cipher == "AES-256-GCM"
    assert options.uses_ekm
    assert options.cc_exit
    assert options.tun_mtu == 1500
    assert options.ignored == ()


def test_continuation_accumulates_until_the_last_part() -> None:
    assembler = PushReplyAssembler()
    first = parse_control_message("PUSH_REPLY,route 10.1.0.0 255.255.0.0,push-continuation 2")
    last = parse_control_message("PUSH_REPLY,route 10.2.0.0 255.255.0.0,push-continuation 1")
    assert isinstance(first, PushReply)
    assert isinstance(last, PushReply)
    assert first.more_follows
    assert assembler.add(first) is None
    lines = assembler.add(last)
    assert lines == ("route 10.1.0.0 255.255.0.0", "route 10.2.0.0 255.255.0.0")
    options = parse_pushed_options(lines, CONFIG)
    assert [str(r.network) for r in options.routes] == ["10.1.0.0/16", "10.2.0.0/16"]


def test_routes_dns_redirect_ipv6() -> None:
    lines = [
        "route 10.8.0.1",
        "route 192.168.100.0 255.255.255.0 vpn_gateway 5",
        "route 172.16.0.0 255.240.0.0 10.8.0.254",
        "route-ipv6 fd00:99::/64",
        "ifconfig-ipv6 fd00:8::1000/64 fd00:8::1",
        "redirect-gateway def1 bypass-dhcp",
        "dhcp-option DNS 10.8.0.1",
        "dhcp-option domain example.test",
        "dns server 1 address 10.8.0.1",
        "tun-ipv6",
        "block-outside-dns",
        "comp-lzo no",
    ]
    options = parse_pushed_options(lines, CONFIG)
    assert [(str(r.network), r.gateway, r.metric) for r in options.routes] == [
        ("10.8.0.1/32", None, None),
        ("192.168.100.0/24", RouteGatewayKeyword.VPN_GATEWAY, 5),
        ("172.16.0.0/12", ipaddress.IPv4Address("10.8.0.254"), None),
    ]
    assert [str(r.network) for r in options.routes_ipv6] == ["fd00:99::/64"]
    assert options.ifconfig_ipv6 is not None
    assert str(options.ifconfig_ipv6.interface) == "fd00:8::1000/64"
    assert options.redirect_gateway is not None
    assert options.redirect_gateway.flags == frozenset({"def1", "bypass-dhcp"})
    assert options.dhcp_options == (
        DhcpOption("DNS", "10.8.0.1"),
        DhcpOption("DOMAIN", "example.test"),
    )
    assert options.compression is Compression.LZO_NO
    ignored = [(i.text.split()[0], i.reason) for i in options.ignored]
    assert [name for name, _ in ignored] == [
        "redirect-gateway",
        "dns",
        "tun-ipv6",
        "block-outside-dns",
    ]
    assert ignored[0][1].startswith("redirect-gateway flag 'bypass-dhcp' is not applied")


def test_route_nopull_drops_what_openvpn_drops() -> None:
    config = Config(client=True, route_nopull=True)
    lines = [
        "route 10.0.0.0 255.0.0.0",
        "route-ipv6 fd00::/8",
        "redirect-gateway def1",
        "dhcp-option DNS 1.1.1.1",
        "route-gateway 10.8.0.1",
        "ifconfig 10.8.0.2 255.255.255.0",
    ]
    options = parse_pushed_options(lines, config)
    assert options.routes == ()
    assert options.routes_ipv6 == ()
    assert options.redirect_gateway is None
    assert options.dhcp_options == ()
    assert options.route_gateway == ipaddress.IPv4Address("10.8.0.1")  # OPT_P_ROUTE_EXTRAS
    assert options.ifconfig is not None
    assert [i.reason for i in options.ignored] == ["route-nopull"] * 4


def test_pull_filter_first_match_wins() -> None:
    config = Config(
        client=True,
        pull_filters=(
            PullFilter(PullFilterAction.ACCEPT, "route 10.1."),
            PullFilter(PullFilterAction.IGNORE, "route "),
            PullFilter(PullFilterAction.REJECT, "dhcp-option DNS"),
        ),
    )
    options = parse_pushed_options(["route 10.1.0.0 255.255.0.0", " route 10.2.0.0"], config)
    assert [str(r.network) for r in options.routes] == ["10.1.0.0/16"]
    assert options.ignored[0].reason == "removed by pull-filter ignore"
    with pytest.raises(RemoteProtocolError, match="pull-filter"):
        parse_pushed_options(["dhcp-option DNS 8.8.8.8"], config)


def test_cipher_must_be_one_of_ours() -> None:
    config = Config(client=True, data_ciphers=("AES-128-GCM",))
    assert parse_pushed_options(["cipher aes-128-gcm"], config).cipher == "AES-128-GCM"
    with pytest.raises(RemoteProtocolError, match="data-ciphers"):
        parse_pushed_options(["cipher AES-256-GCM"], config)


def test_real_compression_needs_permission() -> None:
    with pytest.raises(RemoteProtocolError, match="compression"):
        parse_pushed_options(["compress lz4"], CONFIG)
    config = Config(client=True, allow_compression=AllowCompression.ASYM)
    assert parse_pushed_options(["compress lz4"], config).compression is Compression.LZ4
    assert parse_pushed_options(["compress stub-v2"], CONFIG).compression is Compression.STUB_V2


def test_malformed_and_unknown_options_are_recorded_not_fatal() -> None:
    options = parse_pushed_options(
        ["ifconfig 10.8.0.2", "peer-id 99999999", "route 10.0.0.0 255.0.0.300", "frobnicate 1"],
        CONFIG,
    )
    assert options.ifconfig is None
    assert options.peer_id is None
    assert options.routes == ()
    reasons = [i.reason for i in options.ignored]
    assert reasons[0] == "ifconfig: expects 2 arguments, got 1"  # the config parser's words
    assert reasons[-1] == "not on the allow-list of pushable options"


def test_auth_token_and_user() -> None:
    options = parse_pushed_options(["auth-token SESS_ID_abc", "auth-token-user Ym9i"], CONFIG)
    assert options.auth_token is not None
    assert options.auth_token.value == b"SESS_ID_abc"
    assert "SESS_ID" not in repr(options)
    assert options.auth_token_user == "bob"


def test_explicit_exit_notify_default_and_key_derivation() -> None:
    options = parse_pushed_options(["explicit-exit-notify", "key-derivation tls-ekm"], CONFIG)
    assert options.explicit_exit_notify == 1
    assert options.uses_ekm
    assert not options.cc_exit


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("route 10.0.0.0  255.0.0.0", ["route", "10.0.0.0", "255.0.0.0"]),
        ('echo "hello world" x', ["echo", "hello world", "x"]),
        ("echo 'a \\ b'", ["echo", "a \\ b"]),
        ('echo "a \\" b"', ["echo", 'a " b']),
        ("echo a\\ b", ["echo", "a b"]),
        ("echo a # comment", ["echo", "a"]),
        ("; all comment", []),
    ],
)
def test_parse_line_quoting(line: str, words: list[str]) -> None:
    assert parse_line(line) == words


@pytest.mark.parametrize("line", ['echo "open', "echo 'open", "echo a\\b"])
def test_parse_line_errors(line: str) -> None:
    with pytest.raises(DecodeError):
        parse_line(line)


@given(st.text(max_size=300))
def test_arbitrary_reply_text_gives_options_or_our_errors(text: str) -> None:
    message = parse_control_message("PUSH_REPLY," + text)
    assert isinstance(message, PushReply)
    with contextlib.suppress(DecodeError, RemoteProtocolError):
        parse_pushed_options(message.options, CONFIG)


@given(
    st.lists(
        st.sampled_from(
            [
                "route",
                "ifconfig",
                "peer-id",
                "cipher",
                "dhcp-option",
                "route-ipv6",
                "ping",
                "tun-mtu",
                "compress",
                "topology",
                "1",
                "10.8.0.1",
                "255.255.255.0",
                "fd00::/64",
                "'",
                '"',
                "\\",
                "AES-256-GCM",
                "x",
            ]
        ),
        max_size=6,
    )
)
def test_allow_listed_words_in_any_order(words: list[str]) -> None:
    with contextlib.suppress(DecodeError, RemoteProtocolError):
        parse_pushed_options([" ".join(words)], CONFIG)


# ------------------------------------------------------------------ issue 8: hostile pushes
# Each test takes the exact push lines of the finding as data.

SERVER = ipaddress.IPv4Address("203.0.113.7")


def settings_for(lines: list[str], config: Config = CONFIG) -> tuple[TunnelSettings, list[str]]:
    pushed = parse_pushed_options(lines, config)
    settings, notes = resolve_tunnel_settings(
        config, pushed, remote_address=SERVER, cipher="AES-256-GCM", key_derivation="tls-ekm"
    )
    return settings, list(notes)


def test_finding_1_pushed_dhcp_option_values_are_validated() -> None:
    hostile = [
        "dhcp-option DNS 1.2.3.4;rm",
        "dhcp-option DNS $(reboot)",
        "dhcp-option DNS fe80::1%eth0",
        "dhcp-option DNS 255.255.255.255",
        "dhcp-option ../../etc x",
        'dhcp-option DOMAIN "x; rm -rf /"',
        "dhcp-option DOMAIN-SEARCH $(reboot)",
        "dhcp-option DNS6 ::1",
    ]
    options = parse_pushed_options([*hostile, "dhcp-option DNS 10.8.0.1"], CONFIG)
    assert options.dhcp_options == (DhcpOption("DNS", "10.8.0.1"),)
    assert [i.text for i in options.ignored] == hostile
    assert all(i.reason.startswith("dhcp-option: ") for i in options.ignored)


@pytest.mark.parametrize(
    "line",
    [
        "dhcp-option DNS fe80::1%eth0",
        "dhcp-option DNS 255.255.255.255",
        "dhcp-option ../../etc x",
        'dhcp-option DOMAIN "x; rm -rf /"',
        "route 10.0.0.0 0.255.255.255",
        "route 10.0.0.0 255.0.0.0 default 2147483647",
        "route-ipv6 fe80::%eth0/64",
        "ifconfig-ipv6 2001:db8:9::2/0",
        "ifconfig 224.0.0.1 255.255.255.0",
        "tun-mtu 67",
        "redirect-gateway def1 frobnicate",
        "compress migrate",
        "ping x",
    ],
)
def test_a_pushed_value_is_refused_with_the_config_files_message(line: str) -> None:
    """One grammar: the reason recorded for a pushed line is the message the config parser
    gives for the same line in a file."""
    with pytest.raises(ConfigError) as info:
        parse_config(f"client\nremote vpn.example.org\n{line}\n", read_file=_no_file)
    options = parse_pushed_options([line], CONFIG)
    assert f"{line.split()[0]}: {info.value.message}" in [i.reason for i in options.ignored]


def test_the_config_grammar_reads_what_a_server_pushes() -> None:
    """Pushed options the config table uses are run by it; the push-only ones it rejects."""
    assert all(TABLE[name].outcome is Outcome.USED for name in FROM_CONFIG_GRAMMAR)
    server_only = set(PUSH_ONLY) - {"cipher"}  # a pushed cipher must be one of data-ciphers
    assert all(TABLE[name].outcome is Outcome.REJECTED for name in server_only)


def _no_file(name: str) -> bytes:
    raise FileNotFoundError(name)


def test_finding_2_ifconfig_ipv6_prefix_0_is_refused() -> None:
    options = parse_pushed_options(["ifconfig-ipv6 2001:db8:9::2/0"], CONFIG)
    assert options.ifconfig_ipv6 is None
    assert "shorter than /64" in options.ignored[0].reason


def test_finding_2_a_subnet_netmask_shorter_than_8_is_refused() -> None:
    settings, notes = settings_for(["topology subnet", "ifconfig 200.0.0.2 128.0.0.0"])
    assert settings.ipv4 is None
    assert notes == [
        "ifconfig 200.0.0.2 128.0.0.0 refused: prefix /1 is shorter than /8: "
        "it would route that whole range into the tunnel"
    ]
    settings, notes = settings_for(["topology subnet", "ifconfig 10.8.0.2 255.255.255.0"])
    assert str(settings.ipv4) == "10.8.0.2/24"
    assert notes == []


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        (["ifconfig 224.0.0.1 255.255.255.0"], "multicast"),
        (["ifconfig 127.0.0.2 127.0.0.1"], "loopback"),
    ],
)
def test_finding_2_ifconfig_must_be_unicast(lines: list[str], why: str) -> None:
    options = parse_pushed_options(lines, CONFIG)
    assert options.ifconfig is None
    assert why in options.ignored[0].reason


@pytest.mark.parametrize(
    "lines",
    [
        ["ifconfig 203.0.113.7 10.8.0.1"],
        ["topology subnet", "ifconfig 203.0.113.7 255.255.255.0"],
        ["topology subnet", "ifconfig 10.8.0.2 0.255.255.255"],
        ["topology p2p", "ifconfig 10.8.0.2 224.0.0.1"],
    ],
)
def test_finding_2_server_address_host_masks_and_bad_peers_are_refused(lines: list[str]) -> None:
    settings, notes = settings_for(lines)
    assert settings.ipv4 is None
    assert len(notes) == 1
    assert "refused" in notes[0]


def test_finding_2_ifconfig_ipv6_of_the_server_is_refused() -> None:
    pushed = parse_pushed_options(["ifconfig-ipv6 2001:db8::7/64"], CONFIG)
    settings, notes = resolve_tunnel_settings(
        CONFIG,
        pushed,
        remote_address=ipaddress.IPv6Address("2001:db8::7"),
        cipher="AES-256-GCM",
        key_derivation="tls-ekm",
    )
    assert settings.ipv6 is None
    assert notes == ("ifconfig-ipv6 2001:db8::7/64 refused: it is the server's address",)


def test_finding_3_a_control_message_over_the_cap_ends_the_read() -> None:
    message = b"PUSH_REPLY,setenv X " + b"A" * 60_000 + b",push-continuation 2\x00"
    buffer = bytearray(message)
    with pytest.raises(DecodeError, match="longer than"):
        split_control_messages(buffer)
    assert buffer == bytearray()


def test_finding_3_push_continuation_is_capped_in_bytes() -> None:
    """4,090 parts of setenv X <7,000 A> each (under the per-message cap) stop at 256 KiB."""
    assembler = PushReplyAssembler()
    part = parse_control_message(f"PUSH_REPLY,setenv X {'A' * 7000},push-continuation 2")
    assert isinstance(part, PushReply)
    with pytest.raises(DecodeError, match="bytes"):
        for _ in range(4090):
            assert assembler.add(part) is None
    assert assembler._bytes == 0  # what it held is released


def test_finding_9_auth_pending_timeout_is_capped() -> None:
    assert parse_control_message("AUTH_PENDING,timeout 99999999999") == AuthPending(1800.0)
    assert parse_control_message("AUTH_PENDING,timeout " + "9" * 5000) == AuthPending(1800.0)
    assert parse_control_message("AUTH_PENDING,timeout 120") == AuthPending(120.0)


@pytest.mark.parametrize(
    "line", ["route 203.0.113.7 255.255.255.255", "route 0.0.0.0 0.0.0.0", "redirect-gateway def1"]
)
def test_finding_10_routes_covering_the_server_are_flagged(line: str) -> None:
    settings, _ = settings_for(["ifconfig 10.8.0.2 10.8.0.1", line])
    assert settings.covers_server
    settings, _ = settings_for(["ifconfig 10.8.0.2 10.8.0.1", "route 10.0.0.0 255.0.0.0"])
    assert not settings.covers_server


def test_finding_10_redirect_gateway_flags_are_never_silent() -> None:
    options = parse_pushed_options(
        ["redirect-gateway def1 block-local local bypass-dhcp bypass-dns frobnicate ipv6"], CONFIG
    )
    assert options.redirect_gateway is not None
    assert options.redirect_gateway.flags == frozenset(
        {"def1", "block-local", "local", "bypass-dhcp", "bypass-dns", "ipv6"}
    )
    reasons = sorted(i.reason for i in options.ignored)
    assert len(reasons) == 5
    assert reasons[0].startswith("redirect-gateway flag 'block-local' is not applied: ")
    assert reasons[-1].startswith("redirect-gateway: 'frobnicate': expected one of local, ")


def test_finding_10_host_mask_is_refused_as_openvpn_cannot_use_it() -> None:
    options = parse_pushed_options(["route 10.0.0.0 0.255.255.255"], CONFIG)
    assert options.routes == ()
    assert options.ignored[0].reason == (
        "route: '0.255.255.255': not a netmask (the one bits must be contiguous from the left)"
    )


def test_finding_10_pushed_metrics_have_the_config_bound() -> None:
    options = parse_pushed_options(
        [
            "route 10.0.0.0 255.0.0.0 default 2147483647",
            "route-ipv6 fd00::/8 default 2147483647",
            "route 10.1.0.0 255.255.0.0 default 65535",
        ],
        CONFIG,
    )
    assert [r.metric for r in options.routes] == [65535]
    assert options.routes_ipv6 == ()
    assert all("out of range (0..65535)" in i.reason for i in options.ignored)


HOSTILE_WORDS = st.sampled_from(
    [
        *sorted(FROM_CONFIG_GRAMMAR | set(PUSH_ONLY)),
        "DNS",
        "DNS6",
        "DOMAIN",
        "DISABLE-NBT",
        "default",
        "vpn_gateway",
        "net_gateway",
        "def1",
        "!ipv4",
        "ipv6",
        "0",
        "65535",
        "2147483647",
        "9" * 5000,
        "10.8.0.1",
        "203.0.113.7",
        "255.255.255.255",
        "0.255.255.255",
        "224.0.0.1",
        "fe80::1%eth0",
        "2001:db8::2/0",
        "fd00::1/64",
        "$(reboot)",
        "'",
        '"',
        "\\",
        "#",
        "tls-ekm",
        "AES-256-GCM",
        "Ym9i",
    ]
)


@given(st.lists(st.lists(HOSTILE_WORDS | st.text(max_size=12), max_size=6), max_size=8))
def test_pushed_lines_give_checked_values_or_our_errors(lines: list[list[str]]) -> None:
    """Only our errors escape; whatever is accepted holds the properties of issue 8."""
    try:
        pushed = parse_pushed_options([" ".join(words) for words in lines], CONFIG)
        settings, _ = resolve_tunnel_settings(
            CONFIG, pushed, remote_address=SERVER, cipher="AES-256-GCM", key_derivation="tls-ekm"
        )
    except (DecodeError, RemoteProtocolError):
        return
    for option in settings.dhcp_options:
        if option.kind in ("DNS", "DNS6"):
            assert option.value is not None
            address = ipaddress.ip_address(option.value)
            assert not (address.is_multicast or address.is_loopback or address.is_unspecified)
    for route in settings.routes:
        assert route.metric is None or 0 <= route.metric <= 0xFFFF
    if settings.ipv4 is not None:
        assert settings.ipv4.ip != SERVER
        assert settings.ipv4.network.prefixlen >= 8
    if settings.ipv6 is not None:
        assert settings.ipv6.network.prefixlen >= 64
