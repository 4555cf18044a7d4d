"""Through real proxies to a real OpenVPN 2.6 server over TCP (issue 11, item 5).

The proxy runs in the server's namespace and the server listens on all its addresses; our
client's profile names the server as `127.0.0.1`, which in the client's namespace is nobody:
only a proxy that really carried the connection (and got the name unresolved) gets there.
tinyproxy does HTTP CONNECT (with `BasicAuth` and `ConnectPort`), dante's danted does SOCKS5
(method none, and method username with a throwaway system user).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair
from tests.helpers.openvpn import (
    SERVER_TUN_ADDRESS,
    TUNNEL_NETWORK,
    OpenVpnServer,
    Protection,
    Scenario,
    client_config,
)
from tests.helpers.ourclient import OurClient, engine_ready
from tests.helpers.pki import PkiFiles
from tests.helpers.proxies import available, start_danted, start_tinyproxy, throwaway_user
from tests.helpers.traffic import assert_through_tunnel, ping, tcp_transfer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not engine_ready(), reason="engine Client or config parser not landed"),
    pytest.mark.skipif(not available(), reason="tinyproxy/danted missing: run make setup"),
]

SCENARIO = Scenario(transport="tcp", protection=Protection.TLS_CRYPT)
BEHIND_PROXY = "127.0.0.1"  # the server as only the proxy sees it


def profile(pair: NetnsPair, files: PkiFiles, workdir: Path, *proxy_lines: str) -> str:
    (workdir / "client").mkdir(parents=True, exist_ok=True)
    return client_config(SCENARIO, files, BEHIND_PROXY, real=False) + "\n".join(proxy_lines) + "\n"


def server(pair: NetnsPair, files: PkiFiles, workdir: Path) -> OpenVpnServer:
    """The real OpenVPN server of SCENARIO, in the server namespace."""
    return OpenVpnServer.start(
        pair.server, SCENARIO, files, workdir / "server", pair.server_address
    )


def tunnel_works(pair: NetnsPair, client: OurClient) -> None:
    client.wait_tunnel_up()
    ping(pair.client, SERVER_TUN_ADDRESS)
    transfer = tcp_transfer(pair.server, pair.client, SERVER_TUN_ADDRESS)  # echoed: both ways
    assert_through_tunnel(transfer, str(TUNNEL_NETWORK))


def test_http_connect_with_basic_auth_and_options(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    pair = netns_pair
    (workdir / "proxy-auth.txt").write_text("alice\nopen-sesame-42\n")
    config = profile(
        pair,
        pki_files,
        workdir,
        f"http-proxy {pair.server_address} 3128 {workdir / 'proxy-auth.txt'} basic",
        "http-proxy-option VERSION 1.1",
        "http-proxy-option AGENT miragevpn-test",
        "http-proxy-option CUSTOM-HEADER X-Test yes",
    )
    with (
        server(pair, pki_files, workdir),
        start_tinyproxy(
            pair.server,
            workdir / "tinyproxy",
            pair.server_address,
            basic_auth=("alice", "open-sesame-42"),
            connect_ports=(SCENARIO.port,),
        ) as proxy,
        OurClient.start(pair.client, config, workdir / "client") as client,
    ):
        tunnel_works(pair, client)
        assert f"CONNECT {BEHIND_PROXY}:{SCENARIO.port}" in proxy.log_text(), proxy.log_text()
        assert "open-sesame" not in client.log_text()  # the password is never logged
        assert "HTTP proxy" in client.log_text()
        assert client.stop() == 0, client.tail()


def test_http_proxy_without_auth_and_inline_credentials(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    pair = netns_pair
    config = profile(
        pair,
        pki_files,
        workdir,
        f'http-proxy {pair.server_address} 3128 "" basic',
        "<http-proxy-user-pass>\nbob\nsecond-secret\n</http-proxy-user-pass>",
    )
    with (
        server(pair, pki_files, workdir),
        start_tinyproxy(
            pair.server,
            workdir / "tinyproxy",
            pair.server_address,
            basic_auth=("bob", "second-secret"),
        ),
        OurClient.start(pair.client, config, workdir / "client") as client,
    ):
        tunnel_works(pair, client)
        assert client.stop() == 0, client.tail()


@pytest.mark.parametrize(
    ("auth_line", "expected"),
    [
        ("wrong", "the HTTP proxy refused our credentials for user 'alice' (401 Unauthorized)"),
        (None, "the HTTP proxy requires authentication (407 Proxy Authentication Required)"),
    ],
)
def test_http_proxy_refusals_are_clear(
    netns_pair: NetnsPair,
    pki_files: PkiFiles,
    workdir: Path,
    auth_line: str | None,
    expected: str,
) -> None:
    pair = netns_pair
    proxy_line = f"http-proxy {pair.server_address} 3128"
    if auth_line is not None:
        (workdir / "auth.txt").write_text(f"alice\n{auth_line}-password\n")
        proxy_line += f" {workdir / 'auth.txt'}"
    config = profile(pair, pki_files, workdir, proxy_line, "connect-retry-max 2", "connect-retry 1")
    with (
        start_tinyproxy(
            pair.server, workdir / "tinyproxy", pair.server_address, basic_auth=("alice", "right")
        ),
        OurClient.start(pair.client, config, workdir / "client") as client,
    ):
        assert client.wait_exit(timeout=60) != 0, client.tail()
        assert expected in client.log_text(), client.tail()
        assert "wrong-password" not in client.log_text()


def test_http_proxy_refuses_a_port(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    pair = netns_pair
    config = profile(
        pair, pki_files, workdir, f"http-proxy {pair.server_address} 3128", "connect-retry-max 1"
    )
    with (
        start_tinyproxy(
            pair.server, workdir / "tinyproxy", pair.server_address, connect_ports=(443,)
        ),
        OurClient.start(pair.client, config, workdir / "client") as client,
    ):
        assert client.wait_exit(timeout=60) != 0, client.tail()
        assert (
            f"the HTTP proxy refused to connect to {BEHIND_PROXY}:1194: 403" in client.log_text()
        ), client.tail()


def test_socks5_without_auth(netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path) -> None:
    pair = netns_pair
    config = profile(pair, pki_files, workdir, f"socks-proxy {pair.server_address} 1080")
    with (
        server(pair, pki_files, workdir),
        start_danted(pair.server, workdir / "danted", pair.server_address),
        OurClient.start(pair.client, config, workdir / "client") as client,
    ):
        tunnel_works(pair, client)
        assert "SOCKS5 proxy" in client.log_text()
        assert client.stop() == 0, client.tail()


def test_socks5_username_password_and_a_wrong_password(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    pair = netns_pair
    with (
        throwaway_user() as (user, password),
        server(pair, pki_files, workdir),
        start_danted(pair.server, workdir / "danted", pair.server_address, username=True),
    ):
        (workdir / "socks.txt").write_text(f"{user}\n{password}\n")
        config = profile(
            pair,
            pki_files,
            workdir,
            f"socks-proxy {pair.server_address} 1080 {workdir / 'socks.txt'}",
        )
        with OurClient.start(pair.client, config, workdir / "client") as client:
            tunnel_works(pair, client)
            assert password not in client.log_text()
            assert client.stop() == 0, client.tail()

        (workdir / "bad.txt").write_text(f"{user}\nnot-{password}\n")
        bad = profile(
            pair,
            pki_files,
            workdir,
            f"socks-proxy {pair.server_address} 1080 {workdir / 'bad.txt'}",
            "connect-retry-max 1",
        )
        with OurClient.start(pair.client, bad, workdir / "bad-client") as client:
            assert client.wait_exit(timeout=60) != 0, client.tail()
            assert "the SOCKS proxy refused our user name and password" in client.log_text(), (
                client.tail()
            )
        # no credentials to a proxy that wants them
        none = profile(
            pair,
            pki_files,
            workdir,
            f"socks-proxy {pair.server_address} 1080",
            "connect-retry-max 1",
        )
        with OurClient.start(pair.client, none, workdir / "none-client") as client:
            assert client.wait_exit(timeout=60) != 0, client.tail()
            assert "the SOCKS proxy requires authentication" in client.log_text(), client.tail()
