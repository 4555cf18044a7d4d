"""Key material against a real OpenVPN 2.6 server (issue 11, item 3): PKCS#12 bundles without
`ca` (file and inline; the bundle's CA is the trust anchor, as OpenVPN does), encrypted keys
(PKCS#8 and traditional PEM) and a protected bundle unlocked with `askpass FILE` or a
passphrase typed on a terminal; a wrong passphrase and a missing one (no askpass, no terminal)
end the client at once with exit 1 and plain words, before any network change.

The server (tests/helpers/openvpn.py) wants a client certificate signed by the test CA, so a
tunnel that comes up proves the key was unlocked and presented.
"""

from __future__ import annotations

import base64
import os
import pty
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair
from tests.helpers.openvpn import SERVER_TUN_ADDRESS, OpenVpnServer, Protection, Scenario
from tests.helpers.ourclient import MIRAGEVPN_CLIENT, OurClient, engine_ready
from tests.helpers.pki import ENCRYPTED_KEY_PASSPHRASE, PkiFiles
from tests.helpers.traffic import ping

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not engine_ready(), reason="engine Client or config parser not landed"),
]

SCENARIO = Scenario(protection=Protection.TLS_CRYPT)
QUICK = 20.0  # seconds: a config error ends the client long before any handshake timeout
PROMPT = "Enter Private Key Password: "


def start_server(pair: NetnsPair, files: PkiFiles, workdir: Path) -> OpenVpnServer:
    return OpenVpnServer.start(
        pair.server, SCENARIO, files, workdir / "server", pair.server_address
    )


def config(pair: NetnsPair, files: PkiFiles, *identity: str) -> str:
    """A client profile with `identity` (cert/key, pkcs12, askpass lines) and no `ca` unless
    `identity` has one."""
    lines = [
        "client",
        "dev tun",
        f"remote {pair.server_address} 1194 udp",
        "nobind",
        "remote-cert-tls server",
        f"tls-crypt {files.ta_key}",
        "data-ciphers AES-256-GCM",
        *identity,
    ]
    return "\n".join(lines) + "\n"


def inline_pkcs12(path: Path) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode()
    return "<pkcs12>\n" + "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64)) + "\n</pkcs12>"


def connect(pair: NetnsPair, files: PkiFiles, workdir: Path, text: str) -> None:
    with (
        start_server(pair, files, workdir) as server,
        OurClient.start(pair.client, text, workdir / "client") as client,
    ):
        client.wait_tunnel_up()
        ping(pair.client, SERVER_TUN_ADDRESS)
        assert "Verify OK" in server.log_text() or "Peer Connection Initiated" in server.log_text()
        assert client.stop() == 0, client.tail()
        assert ENCRYPTED_KEY_PASSPHRASE not in client.log_text()


def fails_fast(pair: NetnsPair, files: PkiFiles, workdir: Path, text: str) -> str:
    """Run our client on `text`; it must exit 1 within QUICK seconds. Returns its log."""
    start = time.monotonic()
    with OurClient.start(pair.client, text, workdir / "client") as client:
        assert client.wait_exit(QUICK) == 1, client.tail()
        log = client.log_text()
    assert time.monotonic() - start < QUICK
    assert "tunnel up" not in log and "connecting" not in log.lower()
    assert ENCRYPTED_KEY_PASSPHRASE not in log
    return log


@pytest.mark.parametrize("inline", [False, True], ids=["file", "inline"])
def test_pkcs12_without_ca_trusts_the_bundles_ca(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path, inline: bool
) -> None:
    identity = inline_pkcs12(pki_files.client_p12) if inline else f"pkcs12 {pki_files.client_p12}"
    connect(netns_pair, pki_files, workdir, config(netns_pair, pki_files, identity))


@pytest.mark.parametrize(
    "identity",
    [
        ("cert {client_cert}", "key {client_key_encrypted}"),
        ("cert {client_cert}", "key {client_key_encrypted_traditional}"),
        ("pkcs12 {client_p12_protected}",),
    ],
    ids=["pkcs8", "traditional-pem", "pkcs12"],
)
def test_locked_key_material_with_askpass_file(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path, identity: tuple[str, ...]
) -> None:
    lines = [line.format(**vars(pki_files)) for line in identity]
    if not lines[0].startswith("pkcs12"):
        lines.insert(0, f"ca {pki_files.ca}")
    text = config(netns_pair, pki_files, *lines, f"askpass {pki_files.askpass}")
    connect(netns_pair, pki_files, workdir, text)


def test_locked_inline_pkcs12_with_askpass_file(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    identity = (inline_pkcs12(pki_files.client_p12_protected), f"askpass {pki_files.askpass}")
    connect(netns_pair, pki_files, workdir, config(netns_pair, pki_files, *identity))


@pytest.mark.parametrize(
    ("identity", "words"),
    [
        (
            ("ca {ca}", "cert {client_cert}", "key {client_key_encrypted}"),
            "askpass: the passphrase is wrong: it does not unlock the private key",
        ),
        (
            ("pkcs12 {client_p12_protected}",),
            "askpass: the passphrase is wrong: it does not unlock the PKCS#12 bundle",
        ),
    ],
    ids=["pkcs8", "pkcs12"],
)
def test_wrong_passphrase_is_a_clear_error(
    netns_pair: NetnsPair,
    pki_files: PkiFiles,
    workdir: Path,
    identity: tuple[str, ...],
    words: str,
) -> None:
    wrong = workdir / "wrong-pass.txt"
    wrong.write_text("not the passphrase\n")
    lines = [line.format(**vars(pki_files)) for line in identity]
    text = config(netns_pair, pki_files, *lines, f"askpass {wrong}")
    log = fails_fast(netns_pair, pki_files, workdir, text)
    assert words in log, log
    askpass_line = 8 + len(lines)  # FILE:LINE:COLUMN of the askpass directive
    assert f"miragevpn-client.conf:{askpass_line}:1: askpass: " in log, log


def test_no_askpass_and_no_terminal_is_a_clear_error(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    lines = (f"ca {pki_files.ca}", f"cert {pki_files.client_cert}")
    text = config(netns_pair, pki_files, *lines, f"key {pki_files.client_key_encrypted}")
    log = fails_fast(netns_pair, pki_files, workdir, text)
    assert (
        "askpass: the private key is encrypted, the config has no 'askpass FILE', and standard "
        "input is not a terminal to ask on: put the passphrase on the first line of a file "
        "(chmod 600) and add 'askpass FILE' to the config"
    ) in log, log


def test_passphrase_typed_on_a_terminal(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    """Standard input is a pseudo-terminal (its own session, so /dev/tty is not the test
    runner's): the client prompts, we type the passphrase, the tunnel comes up."""
    pair = netns_pair
    lines = (f"pkcs12 {pki_files.client_p12_protected}",)
    path = workdir / "client" / "miragevpn-client.conf"
    path.parent.mkdir(parents=True)
    path.write_text(config(pair, pki_files, *lines))
    log_path = workdir / "client" / "miragevpn-client.log"
    controller, terminal = pty.openpty()
    with start_server(pair, pki_files, workdir), log_path.open("ab") as log:
        proc = subprocess.Popen(
            pair.client.argv([MIRAGEVPN_CLIENT, str(path)]),
            stdin=terminal,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pair.client.processes.append(proc)  # stopped by PID with the namespace
        os.close(terminal)
        client = OurClient(pair.client, path, log_path, proc)
        try:
            deadline = time.monotonic() + QUICK
            while PROMPT not in client.log_text():
                assert proc.poll() is None, client.tail()
                assert time.monotonic() < deadline, "no prompt:\n" + client.tail()
                time.sleep(0.05)
            os.write(controller, ENCRYPTED_KEY_PASSPHRASE.encode() + b"\n")
            client.wait_tunnel_up()
            ping(pair.client, SERVER_TUN_ADDRESS)
            assert client.stop() == 0, client.tail()
            assert ENCRYPTED_KEY_PASSPHRASE not in client.log_text()  # not echoed, not logged
        finally:
            client.__exit__(None, None, None)
            os.close(controller)
