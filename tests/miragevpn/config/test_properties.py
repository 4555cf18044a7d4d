"""Hypothesis: round-trip on generated models; arbitrary input gives a Config or a ConfigError."""

from __future__ import annotations

import dataclasses
import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from miragevpn.config import Config, format_config, parse_config
from miragevpn.config.model import (
    AddressFamily,
    AuthUserPass,
    DhcpOption,
    HttpProxy,
    Proto,
    ProxyCredentials,
    PullFilter,
    PullFilterAction,
    RedirectGateway,
    Remote,
    Route,
    Secret,
    SocksProxy,
    Topology,
    Transport,
    VerifyX509Name,
    X509NameKind,
)
from tests.helpers.pki import make_pki

PKI = make_pki()
NAME = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\n\r"),
    min_size=1,
    max_size=20,
)
SECONDS = st.integers(1, 100000).map(float)
LABEL = r"[a-z0-9_][a-z0-9_-]{0,11}"
DOMAIN = st.from_regex(rf"{LABEL}(\.{LABEL}){{0,3}}\.?", fullmatch=True)
DNS_OPTIONS = st.builds(
    DhcpOption,
    st.just("DNS"),
    st.sampled_from(["10.8.0.1", "1.1.1.1", "2001:db8::53", "fd00::1"]),
)


def no_files(path: str) -> bytes:
    raise FileNotFoundError(path)


remotes = st.builds(
    Remote,
    host=NAME.filter(lambda s: not s.startswith(("<", "#", ";"))),
    port=st.integers(1, 65535),
    proto=st.builds(Proto, st.sampled_from(Transport), st.sampled_from(AddressFamily)),
)
routes = st.builds(
    Route,
    network=st.builds(
        lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    ),
    gateway=st.none()
    | st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)).filter(
        lambda a: not (a.is_multicast or a.is_loopback or a.is_unspecified or a.is_reserved)
    ),
    metric=st.none() | st.integers(0, 65535),
)


PROXY_CREDENTIALS = st.none() | st.builds(
    ProxyCredentials,
    NAME.filter(lambda s: not s.startswith("<")),
    NAME.map(lambda s: Secret(s.encode())),
)
proxies = st.builds(SocksProxy, NAME, st.integers(1, 65535), PROXY_CREDENTIALS) | st.builds(
    HttpProxy,
    NAME,
    st.integers(1, 65535),
    PROXY_CREDENTIALS,
    version=st.sampled_from(["1.0", "1.1"]),
    agent=st.none() | TEXT,
    custom_headers=st.lists(st.tuples(TEXT, st.none() | TEXT), max_size=3).map(tuple),
)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    creds = draw(
        st.none()
        | st.just(AuthUserPass())
        | st.builds(
            AuthUserPass,
            username=NAME.filter(lambda s: not s.startswith("</")),
            password=st.none() | NAME.map(lambda s: Secret(s.encode())),
        )
    )
    proxy = draw(st.none() | proxies)
    chosen = tuple(draw(st.lists(remotes, min_size=1, max_size=3)))
    if proxy is not None:  # a proxy carries TCP remotes only
        chosen = tuple(
            dataclasses.replace(r, proto=Proto(Transport.TCP, r.proto.family)) for r in chosen
        )
    return Config(
        client=True,
        pull=True,
        tls_client=True,
        remotes=chosen,
        proxy=proxy,
        remote_random=draw(st.booleans()),
        nobind=draw(st.booleans()),
        ca=PKI.ca.cert_pem,
        auth_user_pass=creds or AuthUserPass(),
        verify_x509_name=draw(
            st.none() | st.builds(VerifyX509Name, TEXT, st.sampled_from(X509NameKind))
        ),
        data_ciphers=tuple(
            draw(st.lists(st.sampled_from(["AES-128-GCM", "AES-256-GCM"]), min_size=1, unique=True))
        ),
        ping=draw(st.none() | SECONDS),
        hand_window=draw(SECONDS),
        reneg_sec=draw(st.none() | SECONDS),
        reneg_sec_min=draw(st.none() | SECONDS),
        topology=draw(st.none() | st.sampled_from(Topology)),
        routes=tuple(draw(st.lists(routes, max_size=3))),
        redirect_gateway=draw(
            st.none() | st.builds(RedirectGateway, st.frozensets(st.sampled_from(["def1", "ipv6"])))
        ),
        pull_filters=tuple(
            draw(st.lists(st.builds(PullFilter, st.sampled_from(PullFilterAction), TEXT)))
        ),
        dhcp_options=tuple(
            draw(st.lists(st.builds(DhcpOption, st.just("DOMAIN"), DOMAIN) | DNS_OPTIONS))
        ),
    )


@given(configs())
def test_round_trip(config: Config) -> None:
    # routes normalise their network address; the generator already gives network addresses
    assert parse_config(format_config(config), read_file=no_files) == config


@given(st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    try:
        parse_config(data, read_file=no_files)
    except Exception as exc:
        from miragevpn.errors import ConfigError

        assert isinstance(exc, ConfigError), repr(exc)


LINES = st.sampled_from(
    [
        "client",
        "dev tun",
        "remote a",
        "ca ca.crt",
        "<ca>",
        "</ca>",
        "auth-user-pass",
        "'",
        '"',
        "\\",
        "setenv opt",
        "<connection>",
        "</connection>",
        "remote",
        "port x",
        "# c",
        "key-direction 1",
    ]
)


@given(st.lists(LINES | st.text(max_size=15), max_size=12))
def test_arbitrary_lines(lines: list[str]) -> None:
    try:
        parse_config("\n".join(lines), read_file=no_files)
    except Exception as exc:
        from miragevpn.errors import ConfigError

        assert isinstance(exc, ConfigError), repr(exc)


def test_replace_keeps_equality() -> None:
    c = Config(client=True)
    assert dataclasses.replace(c, ignored=()) == c
