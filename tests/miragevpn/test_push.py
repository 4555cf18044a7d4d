"""Control messages and PUSH_REPLY options."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
from miragevpn.errors import DecodeError, RemoteProtocolError
from miragevpn.push import (
    AuthFailed,
    AuthPending,
    Exit,
    Halt,
    Info,
    PushReply,
    PushReplyAssembler,
    Restart,
    Unrecognised,
    encode_control_message,
    parse_control_message,
    parse_line,
    parse_pushed_options,
    split_control_messages,
)

CONFIG = Config(client=True)

# The reply a 2.6 server sends for `server 10.8.0.0 255.255.255.0`, `topology subnet`,
# `keepalive 10 60` to a client with IV_PROTO bit 7 (openvpn-protocol.md §7.3).
TYPICAL = (
    "PUSH_REPLY,route-gateway 10.8.0.1,topology subnet,ping 10,ping-restart 60,"
    "ifconfig 10.8.0.2 255.255.255.0,peer-id 0,cipher AES-256-GCM,"
    "protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500"
)


def test_split_keeps_partial_and_drops_non_printable() -> None:
    buffer = bytearray(b"PUSH_REPLY,ping 10\r\n\x00INFO,caf\xc3\xa9\x00\x00HALT,bye\x00RESTA")
    assert split_control_messages(buffer) == ["PUSH_REPLY,ping 10", "HALT,bye"]
    assert buffer == bytearray(b"RESTA")
    buffer += b"RT\x00"
    assert split_control_messages(buffer) == ["RESTART"]
    assert buffer == bytearray()


def test_split_bounds_text_without_nul() -> None:
    buffer = bytearray(b"x" * 70000)
    with pytest.raises(DecodeError):
        split_control_messages(buffer)
    assert buffer == bytearray()


def test_encode_control_message() -> None:
    assert encode_control_message("PUSH_REQUEST") == b"PUSH_REQUEST\x00"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AUTH_FAILED", AuthFailed("")),
        ("AUTH_FAILED,bad password", AuthFailed("bad password")),
        ("AUTH_PENDING", AuthPending(None)),
        ("AUTH_PENDING,timeout 180", AuthPending(180.0)),
        ("RESTART", Restart("", frozenset())),
        ("RESTART,[N]server shutting down", Restart("server shutting down", frozenset("N"))),
        ("RESTART,[PN]x", Restart("x", frozenset("PN"))),
        ("HALT,go away", Halt("go away", frozenset())),
        ("INFO,WEB_AUTH::https://x", Info("WEB_AUTH::https://x", pre=False)),
        ("INFO_PRE,hello", Info("hello", pre=True)),
        ("EXIT", Exit()),
        ("PUSH_REPLY", PushReply((), more_follows=False)),
        ("PUSH_REPLYX", Unrecognised("PUSH_REPLYX")),
        ("HALTING", Unrecognised("HALTING")),
    ],
)
def test_classify(text: str, expected: object) -> None:
    assert parse_control_message(text) == expected


def test_temporary_auth_failure() -> None:
    assert AuthFailed("TEMP[backoff 30]:busy").temporary
    assert not AuthFailed("nope").temporary


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
    assert [i.text.split()[0] for i in options.ignored] == ["dns", "tun-ipv6", "block-outside-dns"]


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
    assert reasons[0].startswith("ifconfig: takes 2 to 2 arguments")
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


@given(st.binary(max_size=200))
def test_split_arbitrary_bytes(data: bytes) -> None:
    buffer = bytearray(data)
    for message in split_control_messages(buffer):
        assert message.isprintable()
        assert not message.endswith(("\r", "\n"))
        parse_control_message(message)
