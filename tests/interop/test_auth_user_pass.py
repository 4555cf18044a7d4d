"""Username/password against a real OpenVPN 2.6 server (issue 11, item 1).

The server checks passwords with an `auth-user-pass-verify` script this test writes, does not
ask for a client certificate (`verify-client-cert none`) and pushes an `auth-token`
(`auth-gen-token`). The script accepts the right password only ONCE, so a renegotiation that
succeeds proves we sent the token, not the password. Refusals use the script's deferred form
so that the server sends its reason (`auth_failed_reason_file`): we must show it, and honour
`AUTH_FAILED,TEMP[backoff N]`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair, wait_until
from tests.helpers.openvpn import SERVER_TUN_ADDRESS, OpenVpnServer, Protection, Scenario
from tests.helpers.ourclient import OurClient, engine_ready
from tests.helpers.password_auth import calls, verify_script_lines
from tests.helpers.password_auth import password_client_config as our_config
from tests.helpers.pki import PkiFiles
from tests.helpers.traffic import ping

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not engine_ready(), reason="engine Client or config parser not landed"),
]

PASSWORD = "correct horse battery"
VERIFY = """#!/bin/sh
# $1: a file holding the username and the password, one per line (via-file)
user=$(sed -n 1p "$1")
pass=$(sed -n 2p "$1")
echo "$(date +%s) $user" >> {dir}/calls
if [ "$user" = alice ] && [ "$pass" = "{password}" ]; then
    if [ ! -e {dir}/used ]; then
        touch {dir}/used
        exit 0
    fi
    reason="this password was already used once"
elif [ "$user" = temp ]; then
    reason="TEMP[backoff 6]:maintenance window"
else
    reason="unknown user or wrong password for $user"
fi
printf '%s' "$reason" > "$auth_failed_reason_file"
echo 0 > "$auth_control_file"
exit 2
"""


def start_server(pair: NetnsPair, files: PkiFiles, workdir: Path) -> OpenVpnServer:
    script = VERIFY.format(dir=workdir, password=PASSWORD)
    scenario = Scenario(
        protection=Protection.TLS_CRYPT,
        extra_server=(
            "verify-client-cert none",
            "username-as-common-name",
            *verify_script_lines(workdir, script),
            "reneg-sec 6",
        ),
    )
    return OpenVpnServer.start(
        pair.server, scenario, files, workdir / "server", pair.server_address
    )


def test_password_once_then_the_auth_token_at_renegotiation(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    pair = netns_pair
    config = our_config(pair, pki_files, f"alice\n{PASSWORD}", "auth-nocache")
    with (
        start_server(pair, pki_files, workdir) as server,
        OurClient.start(pair.client, config, workdir / "client") as client,
    ):
        client.wait_tunnel_up()
        ping(pair.client, SERVER_TUN_ADDRESS)
        assert len(calls(workdir)) == 1
        # the server renegotiates after 6 s; each key it makes is logged once
        keys = "Outgoing Data Channel: Cipher"
        wait_until(
            lambda: server.log_text().count(keys) >= 2,
            timeout=30,
            what="a renegotiation",
        )
        ping(pair.client, SERVER_TUN_ADDRESS)
        assert len(calls(workdir)) == 1, calls(workdir)  # the token, never the password again
        assert "Invalid auth-token" not in server.log_text()
        assert client.stop() == 0, client.tail()


def test_a_refused_password_ends_with_the_servers_reason(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    pair = netns_pair
    config = our_config(pair, pki_files, "bob\nwrong")
    with (
        start_server(pair, pki_files, workdir),
        OurClient.start(pair.client, config, workdir / "client") as client,
    ):
        assert client.wait_exit(timeout=60) == 3, client.tail()
        assert "unknown user or wrong password for bob" in client.log_text(), client.tail()
        assert len(calls(workdir)) == 1  # auth-retry none: no second try


def test_auth_retry_nointeract_tries_again(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    pair = netns_pair
    config = our_config(pair, pki_files, "bob\nwrong", "auth-retry nointeract", "connect-retry 1")
    with (
        start_server(pair, pki_files, workdir),
        OurClient.start(pair.client, config, workdir / "client") as client,
    ):
        wait_until(lambda: len(calls(workdir)) >= 2, timeout=30, what="a second attempt")
        assert client.proc.poll() is None, client.tail()
        assert client.stop() == 0, client.tail()


def test_a_temporary_refusal_waits_the_servers_backoff(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    pair = netns_pair
    config = our_config(pair, pki_files, "temp\nanything", "connect-retry 1")
    with (
        start_server(pair, pki_files, workdir),
        OurClient.start(pair.client, config, workdir / "client") as client,
    ):
        wait_until(lambda: len(calls(workdir)) >= 2, timeout=40, what="a second attempt")
        first, second = (int(line.split()[0]) for line in calls(workdir)[:2])
        assert second - first >= 6 - 1, calls(workdir)  # whole seconds: allow one of rounding
        assert client.proc.poll() is None, client.tail()
        started = time.monotonic()
        assert client.stop() == 0, client.tail()
        assert time.monotonic() - started < 10
