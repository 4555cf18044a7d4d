"""One-time codes against a real OpenVPN 2.6 server (issue 11, item 2), typed on a terminal.

The server checks logins with an `auth-user-pass-verify` script this test writes:
- alice sends a static-challenge response: the password field must be
  `SCRV1:base64(password):base64(code)` with the right password and code;
- carol gets a dynamic challenge: her plain password is refused with
  `CRV1:E:<state>:base64(carol@corp):<text>` in `auth_failed_reason_file` (OpenVPN 2.6 sends
  the file's text as the AUTH_FAILED reason, ssl_verify.c), and the next login must be
  carol@corp with `CRV1::<state>::<code>`.
Our client runs with its standard input on a pty the test holds: the test reads the prompt,
checks whether the terminal echoes, and types the code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair, wait_until
from tests.helpers.openvpn import SERVER_TUN_ADDRESS, OpenVpnServer, Protection, Scenario
from tests.helpers.ourclient import OurClient, engine_ready
from tests.helpers.password_auth import calls, password_client_config, verify_script_lines
from tests.helpers.pki import PkiFiles
from tests.helpers.traffic import ping

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not engine_ready(), reason="engine Client or config parser not landed"),
]

PASSWORD = "correct horse:battery"
CODE = "314159"
STATE = "Om01u7Fh4LrGBS7uh0SWmzwabUiGiW6l"
VERIFY = """#!/bin/sh
# $1: a file holding the username and the password, one per line (via-file)
user=$(sed -n 1p "$1")
pass=$(sed -n 2p "$1")
field() {{ printf '%s' "$pass" | cut -d: -f"$1" | base64 -d; }}
case "$pass" in
SCRV1:*)
    if [ "$user" = alice ] && [ "$(field 2)" = "{password}" ] && [ "$(field 3)" = "{code}" ]; then
        echo "$user static-ok" >> {dir}/calls
        exit 0
    fi
    echo "$user static-bad" >> {dir}/calls
    reason="wrong password or code";;
CRV1::*)
    rest=${{pass#CRV1::}}
    state=${{rest%%::*}}
    if [ "$user" = carol@corp ] && [ "$state" = "{state}" ] && [ "${{rest#*::}}" = "{code}" ]; then
        echo "$user dynamic-ok" >> {dir}/calls
        exit 0
    fi
    echo "$user dynamic-bad" >> {dir}/calls
    reason="wrong answer";;
*)
    echo "$user plain" >> {dir}/calls
    if [ "$user" = carol ] && [ "$pass" = "{password}" ]; then
        reason="CRV1:E:{state}:$(printf carol@corp | base64):Enter the code sent to your phone"
    else
        reason="wrong password for $user"
    fi;;
esac
printf '%s' "$reason" > "$auth_failed_reason_file"
echo 0 > "$auth_control_file"
exit 2
"""


def start_server(pair: NetnsPair, files: PkiFiles, workdir: Path) -> OpenVpnServer:
    script = VERIFY.format(dir=workdir, password=PASSWORD, code=CODE, state=STATE)
    scenario = Scenario(
        protection=Protection.TLS_CRYPT,
        extra_server=(
            "verify-client-cert none",
            "username-as-common-name",
            *verify_script_lines(workdir, script),
        ),
    )
    return OpenVpnServer.start(
        pair.server, scenario, files, workdir / "server", pair.server_address
    )


def our_config(pair: NetnsPair, files: PkiFiles, user: str, *extra: str) -> str:
    return password_client_config(pair, files, f"{user}\n{PASSWORD}", *extra)


class Terminal:
    """A pty: the client gets the terminal end as its standard input, the test the other."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        os.set_blocking(self.master, False)
        self.seen = b""

    def read_until(self, wanted: bytes, client: OurClient, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            if client.proc.poll() is not None:
                raise AssertionError(f"client exited {client.proc.returncode}:\n{client.tail()}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no {wanted!r} on the terminal: {self.seen!r}\n{client.tail()}")
            try:
                self.seen += os.read(self.master, 4096)
            except BlockingIOError:
                time.sleep(0.05)

    def echoes(self) -> bool:
        return bool(termios.tcgetattr(self.slave)[3] & termios.ECHO)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    try:
        yield term
    finally:
        term.close()


def test_a_static_challenge_code_typed_on_the_terminal(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path, terminal: Terminal
) -> None:
    pair = netns_pair
    config = our_config(pair, pki_files, "alice", 'static-challenge "Enter Authenticator Code" 0')
    with (
        start_server(pair, pki_files, workdir),
        OurClient.start(pair.client, config, workdir / "client", stdin=terminal.slave) as client,
    ):
        terminal.read_until(b"CHALLENGE: Enter Authenticator Code", client)
        assert not terminal.echoes()  # ECHO 0: the code is not shown
        assert calls(workdir) == []  # asked before connecting
        terminal.type(CODE + "\n")
        client.wait_tunnel_up()
        ping(pair.client, SERVER_TUN_ADDRESS)
        assert calls(workdir) == ["alice static-ok"]
        assert CODE.encode() not in terminal.seen  # not echoed
        assert terminal.echoes()  # the terminal's echo is put back
        assert client.stop() == 0, client.tail()
    log = client.log_text()
    assert CODE not in log and PASSWORD not in log and "SCRV1" not in log


def test_a_dynamic_challenge_from_the_server_is_answered_on_the_terminal(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path, terminal: Terminal
) -> None:
    pair = netns_pair
    config = our_config(pair, pki_files, "carol")
    with (
        start_server(pair, pki_files, workdir),
        OurClient.start(pair.client, config, workdir / "client", stdin=terminal.slave) as client,
    ):
        terminal.read_until(b"CHALLENGE: Enter the code sent to your phone", client)
        assert calls(workdir) == ["carol plain"]
        assert terminal.echoes()  # flag E: the code may be shown
        terminal.type(CODE + "\n")
        client.wait_tunnel_up()
        ping(pair.client, SERVER_TUN_ADDRESS)
        assert calls(workdir) == ["carol plain", "carol@corp dynamic-ok"]
        assert client.stop() == 0, client.tail()
    log = client.log_text()
    assert "Enter the code sent to your phone" in log  # the question is logged...
    assert CODE not in log and PASSWORD not in log and STATE not in log  # ...never the answer


def test_without_a_terminal_the_client_says_so_and_exits_3(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    pair = netns_pair
    config = our_config(pair, pki_files, "carol")
    with (
        start_server(pair, pki_files, workdir),
        OurClient.start(pair.client, config, workdir / "client", stdin=subprocess.DEVNULL) as c,
    ):
        assert c.wait_exit(timeout=60) == 3, c.tail()
        assert "the server asks for a one-time code" in c.log_text(), c.tail()
        assert "standard input is not a terminal" in c.log_text(), c.tail()
        wait_until(lambda: calls(workdir) == ["carol plain"], timeout=5, what="one login")


def test_sigint_at_the_prompt_stops_at_once_and_restores_the_terminal(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path, terminal: Terminal
) -> None:
    pair = netns_pair
    config = our_config(pair, pki_files, "alice", 'static-challenge "Enter Authenticator Code" 0')
    with OurClient.start(pair.client, config, workdir / "client", stdin=terminal.slave) as client:
        terminal.read_until(b"CHALLENGE: Enter Authenticator Code", client)
        assert not terminal.echoes()
        started = time.monotonic()
        # Ctrl-C; the pty is not the client's controlling terminal, so the test sends the
        # SIGINT the terminal would send (by PID)
        client.proc.send_signal(signal.SIGINT)
        assert client.wait_exit(timeout=10) == 0, client.tail()
        assert time.monotonic() - started < 5
        assert terminal.echoes()  # echo put back although the question was never answered
