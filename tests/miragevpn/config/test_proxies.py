"""http-proxy, http-proxy-option, http-proxy-user-pass and socks-proxy (config/proxies.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from miragevpn.config import format_config, parse_config
from miragevpn.config.model import HttpProxy, ProxyCredentials, Secret, SocksProxy
from miragevpn.config.parse import file_references
from miragevpn.errors import ConfigError

Reader = Callable[[str], bytes]
BASE = (
    "client\ndev tun\nremote vpn.example.org 443 tcp\nca ca.crt\ncert client.crt\nkey client.key\n"
)
NO_REMOTE = BASE.replace("remote vpn.example.org 443 tcp\n", "")
ALICE = ProxyCredentials("alice", Secret(b"s3cret pass"))


@pytest.fixture
def read(files: dict[str, bytes]) -> Reader:
    files["proxy.txt"] = b"alice\ns3cret pass\n"
    files["other.txt"] = b"bob\nhunter2\n"
    files["half.txt"] = b"alice\n"

    def read(path: str) -> bytes:
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return files[path]

    return read


def fails(text: str, read: Reader, fragment: str, line: int | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, read_file=read)
    assert fragment in info.value.message, info.value.message
    if line is not None:
        assert info.value.line == line, info.value
    return info.value


def round_trips(config: object) -> None:
    def no_files(path: str) -> bytes:
        raise AssertionError(path)

    assert parse_config(format_config(config), read_file=no_files) == config  # type: ignore[arg-type]


def test_http_proxy_without_auth(read: Reader) -> None:
    c = parse_config(BASE + "http-proxy proxy.lan 3128\n", read_file=read)
    assert c.proxy == HttpProxy("proxy.lan", 3128)
    round_trips(c)


def test_http_proxy_basic_from_file_then_inline_overrides(read: Reader) -> None:
    c = parse_config(BASE + "http-proxy 10.0.0.1 8080 proxy.txt\n", read_file=read)
    assert c.proxy == HttpProxy("10.0.0.1", 8080, ALICE)
    assert "s3cret" not in repr(c.proxy)  # the password is a Secret
    # http-proxy-user-pass wins over the authfile, which is then not read (proxy.c)
    text = BASE + "http-proxy 10.0.0.1 8080 missing.txt basic\nhttp-proxy-user-pass other.txt\n"
    c = parse_config(text, read_file=read)
    assert isinstance(c.proxy, HttpProxy) and c.proxy.credentials is not None
    assert c.proxy.credentials.username == "bob"
    inline = BASE + (
        'http-proxy p 1 "" basic\n'
        "<http-proxy-user-pass>\nalice\ns3cret pass\n</http-proxy-user-pass>\n"
    )
    c = parse_config(inline, read_file=read)
    assert c.proxy == HttpProxy("p", 1, ALICE)
    round_trips(c)
    assert [r.name for r in file_references(BASE + "http-proxy p 1 proxy.txt\n")][-1] == "proxy.txt"
    assert [r.name for r in file_references(BASE + "socks-proxy p 1 s.txt\n")][-1] == "s.txt"


def test_http_proxy_options(read: Reader) -> None:
    text = BASE + (
        "http-proxy p 3128\nhttp-proxy-option VERSION 1.1\nhttp-proxy-option AGENT 'Mozilla 5'\n"
        "http-proxy-option CUSTOM-HEADER X-Token abc\nhttp-proxy-option EXT1 'X-Whole: line'\n"
    )
    c = parse_config(text, read_file=read)
    assert c.proxy == HttpProxy(
        "p",
        3128,
        version="1.1",
        agent="Mozilla 5",
        custom_headers=(("X-Token", "abc"), ("X-Whole: line", None)),
    )
    round_trips(c)
    eleven = "".join(f"http-proxy-option CUSTOM-HEADER X-{i} v\n" for i in range(11))
    fails(BASE + "http-proxy p 1\n" + eleven, read, "at most 10 CUSTOM-HEADER", 18)
    fails(BASE + "http-proxy p 1\nhttp-proxy-option VERSION 2\n", read, "1.0 (the default) or 1.1")
    fails(BASE + "http-proxy p 1\nhttp-proxy-option FOO bar\n", read, "expected VERSION", 8)
    fails(BASE + "http-proxy-option AGENT x\n", read, "http-proxy not specified", 7)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("http-proxy p", "port is missing"),
        ("http-proxy p 0", "'0'"),
        ("http-proxy p 3128 auto", "detecting the proxy's authentication method"),
        ("http-proxy p 3128 auto-nct", "detecting the proxy's authentication method"),
        ("http-proxy p 3128 proxy.txt ntlm", "NTLM proxy authentication is not supported"),
        ("http-proxy p 3128 proxy.txt ntlm2", "NTLM proxy authentication is not supported"),
        ("http-proxy p 3128 proxy.txt digest", "digest"),
        ("http-proxy p 3128 proxy.txt kerberos", "unknown HTTP proxy auth-method"),
        ("http-proxy p 3128 stdin", "asking for proxy credentials is not supported"),
        ('http-proxy p 3128 ""', "add an <http-proxy-user-pass> block"),
        ("http-proxy p 3128 nothere.txt", "cannot read the proxy credentials 'nothere.txt'"),
        ("http-proxy p 3128 half.txt", "password on line 2"),
        ("socks-proxy p 1080 half.txt", "password on line 2"),
        ("socks-proxy p 1080 stdin", "asking for proxy credentials is not supported"),
        ("socks-proxy p 1080 [inline]", "no <socks-proxy> block"),
        ("http-proxy p 1\nsocks-proxy q", "http-proxy can not be used together with socks-proxy"),
    ],
)
def test_rejections(read: Reader, line: str, fragment: str) -> None:
    err = fails(BASE + line + "\n", read, fragment)
    assert err.line is not None and err.line >= 7


def test_tcp_only(read: Reader) -> None:
    udp = BASE.replace("443 tcp", "1194 udp")
    fails(udp + "http-proxy p 3128\n", read, "http-proxy carries TCP only", 7)
    fails(udp + "socks-proxy p\n", read, "UDP ASSOCIATE is not offered here", 7)


def test_socks_proxy(read: Reader) -> None:
    c = parse_config(BASE + "socks-proxy 10.152.152.10 9050\n", read_file=read)
    assert c.proxy == SocksProxy("10.152.152.10", 9050)
    assert parse_config(BASE + "socks-proxy tor\n", read_file=read).proxy == SocksProxy("tor", 1080)
    c = parse_config(BASE + "socks-proxy tor 9050 proxy.txt\n", read_file=read)
    assert c.proxy == SocksProxy("tor", 9050, ALICE)
    round_trips(c)  # written as `socks-proxy tor 9050 [inline]` + <socks-proxy> (an extension)
    assert "[inline]" in format_config(c)
    long = BASE + f"socks-proxy tor 9050 [inline]\n<socks-proxy>\n{'u' * 256}\npw\n</socks-proxy>\n"
    fails(long, read, "at most 255 bytes", 7)


def test_connection_blocks(read: Reader) -> None:
    same = NO_REMOTE + (
        "socks-proxy tor 9050\n"
        "<connection>\nremote a 443 tcp\n</connection>\n"
        "<connection>\nremote b 443 tcp\nsocks-proxy tor 9050\n</connection>\n"
    )
    assert parse_config(same, read_file=read).proxy == SocksProxy("tor", 9050)
    differ = NO_REMOTE + (
        "<connection>\nremote a 443 tcp\nhttp-proxy p 1\n</connection>\n"
        "<connection>\nremote b 443 tcp\n</connection>\n"
    )
    fails(differ, read, "a different proxy per <connection> block is not supported", 8)


def test_inline_credentials_stay_out_of_repr() -> None:
    from miragevpn.config.proxies import CredentialsSource

    assert "sw0rd" not in repr(CredentialsSource(inline="bob\nsw0rd\n"))
