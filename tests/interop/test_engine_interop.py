"""The engine's `Client` against a real OpenVPN 2.6 server, driven by a tiny synchronous loop.

No tun device and no runtime: the test process starts the server in one namespace and runs this
module as a program (`python -m tests.interop.test_engine_interop CONFIG`) inside the client
namespace. The program drives `Client` with a plain socket until `TunnelEstablished`, then sends
an ICMP echo request to the server's tun address (10.8.0.1) through `encrypt_tunnel_packet` and
waits for the decrypted echo reply. It prints one JSON line and exits 0 on success. Every loop
is bounded by a wall-clock deadline.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.ippacket import icmp_echo_request, is_echo_reply

DRIVER_TIMEOUT = 40.0


# --------------------------------------------------------------------------- the driver


def drive(config_path: str, *, tls_ekm: bool = True) -> dict[str, Any]:
    """Run our Client against the server named in the config; returns what happened."""
    from miragevpn.client import Client
    from miragevpn.config.model import Transport
    from miragevpn.events import (
        ConnectionRequested,
        SessionEnded,
        SessionRestarting,
        TlsEstablished,
        TunnelEstablished,
    )
    from qubes_miragevpn.cli import load_config

    config = load_config(Path(config_path))
    client = Client(
        config, rng=os.urandom, now=time.monotonic(), wall_clock=time.time, tls_ekm=tls_ekm
    )
    result: dict[str, Any] = {"events": []}
    sock: socket.socket | None = None
    transport = Transport.UDP
    settings = None
    ident, seq = os.getpid() & 0xFFFF, 1
    echo_sent_at: float | None = None
    deadline = time.monotonic() + DRIVER_TIMEOUT

    def send_all(now: float) -> None:
        assert sock is not None
        for wire in client.data_to_send(now=now):
            if transport is Transport.UDP:
                sock.send(wire)
            else:
                sock.sendall(wire)

    while time.monotonic() < deadline:
        now = time.monotonic()
        while (event := client.next_event()) is not None:
            result["events"].append(type(event).__name__)
            if isinstance(event, ConnectionRequested):
                transport = event.transport
                kind = socket.SOCK_DGRAM if transport is Transport.UDP else socket.SOCK_STREAM
                if sock is not None:
                    sock.close()
                sock = socket.socket(socket.AF_INET, kind)
                sock.settimeout(10)
                sock.connect((str(event.address), event.port))
                sock.setblocking(False)
                client.handle_connected(now=time.monotonic())
            elif isinstance(event, TlsEstablished):
                result["tls"] = f"{event.version} {event.cipher}"
            elif isinstance(event, TunnelEstablished):
                settings = event.settings
                result["cipher"] = settings.cipher
                result["key_derivation"] = settings.key_derivation
                result["ipv4"] = str(settings.ipv4)
            elif isinstance(event, SessionRestarting | SessionEnded):
                result["failure"] = event.reason
                return result
        if sock is None:
            raise RuntimeError("the client asked for no connection")
        send_all(now)
        if settings is not None and settings.ipv4 is not None and echo_sent_at is None:
            request = icmp_echo_request(
                settings.ipv4.ip.packed, socket.inet_aton("10.8.0.1"), ident, seq
            )
            wire = client.encrypt_tunnel_packet(request, now=now)
            assert wire is not None, "no data key after TunnelEstablished"
            sock.send(wire)
            echo_sent_at = now
        timer = client.get_timer()
        wait = 0.2 if timer is None else min(max(timer - time.monotonic(), 0.0), 0.2)
        readable, _, _ = select.select([sock], [], [], wait)
        if readable:
            data = sock.recv(65536)
            if not data:
                result["failure"] = "server closed the connection"
                return result
            client.receive(data, now=time.monotonic())
            for packet in client.tunnel_packets():
                if is_echo_reply(packet, ident, seq):
                    result["echo_reply"] = True
                    result["stats"] = {
                        "dropped": {r.value: n for r, n in client.stats.dropped.items()},
                        "tunnel_packets_in": client.stats.tunnel_packets_in,
                    }
                    client.close(now=time.monotonic())
                    send_all(time.monotonic())
                    return result
        timer = client.get_timer()
        if timer is not None and time.monotonic() >= timer:
            client.handle_timer(now=time.monotonic())
        if echo_sent_at is not None and time.monotonic() - echo_sent_at > 3:
            echo_sent_at = None  # resend the echo request (a fresh packet id)
            seq += 1
    result["failure"] = "timed out"
    return result


def main() -> int:
    result = drive(sys.argv[1], tls_ekm="--prf" not in sys.argv[2:])
    print(json.dumps(result))
    return 0 if result.get("echo_reply") else 1


# --------------------------------------------------------------------------- the tests

if __name__ != "__main__":
    from tests.helpers.netns import NetnsPair, netns_pair_context
    from tests.helpers.openvpn import OpenVpnServer, Protection, Scenario, client_config
    from tests.helpers.pki import PkiFiles, make_pki, write_pki

    pytestmark = pytest.mark.interop

    REPO = Path(__file__).resolve().parents[2]
    PYTHON = str(REPO / ".venv" / "bin" / "python")

    CASES = [
        Scenario(transport="udp", protection=Protection.TLS_AUTH, data_ciphers=("AES-256-GCM",)),
        Scenario(transport="tcp", protection=Protection.TLS_AUTH, data_ciphers=("AES-256-GCM",)),
        Scenario(transport="udp", protection=Protection.TLS_CRYPT, data_ciphers=("AES-128-GCM",)),
        Scenario(transport="tcp", protection=Protection.TLS_CRYPT, data_ciphers=("AES-128-GCM",)),
        Scenario(
            transport="udp", protection=Protection.TLS_AUTH, data_ciphers=("CHACHA20-POLY1305",)
        ),
        Scenario(transport="udp", protection=Protection.NONE, data_ciphers=("AES-256-GCM",)),
        Scenario(
            transport="udp",
            protection=Protection.TLS_CRYPT,
            data_ciphers=("AES-256-GCM",),
            force_ekm=True,
        ),
        Scenario(
            transport="udp", protection=Protection.TLS_CRYPT_V2, data_ciphers=("AES-256-GCM",)
        ),
        Scenario(
            transport="tcp", protection=Protection.TLS_CRYPT_V2, data_ciphers=("AES-128-GCM",)
        ),
        Scenario(
            transport="udp",
            protection=Protection.TLS_AUTH,
            data_ciphers=("AES-256-GCM",),
            topology="net30",
        ),
    ]

    @pytest.fixture(scope="module")
    def pki_files(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
        return write_pki(make_pki(), tmp_path_factory.mktemp("pki"))

    def run_engine(
        pair: NetnsPair, scenario: Scenario, files: PkiFiles, tmp: Path, *extra: str
    ) -> dict[str, Any]:
        config = tmp / "engine-client.conf"
        config.write_text(client_config(scenario, files, pair.server_address, real=False))
        completed = pair.client.run(
            [PYTHON, "-m", "tests.interop.test_engine_interop", str(config), *extra],
            timeout=DRIVER_TIMEOUT + 10,
            check=False,
        )
        lines = completed.stdout.strip().splitlines()
        assert lines, f"driver printed nothing; stderr:\n{completed.stderr}"
        result: dict[str, Any] = json.loads(lines[-1])
        result["returncode"] = completed.returncode
        return result

    @pytest.mark.parametrize("scenario", CASES, ids=lambda s: f"{s.label}-{s.topology}")
    def test_engine_reaches_the_tunnel_and_pings(
        scenario: Scenario, pki_files: PkiFiles, tmp_path: Path
    ) -> None:
        with (
            netns_pair_context() as pair,
            OpenVpnServer.start(
                pair.server, scenario, pki_files, tmp_path / "server", pair.server_address
            ) as server,
        ):
            result = run_engine(pair, scenario, pki_files, tmp_path)
            assert result.get("echo_reply"), f"{result}\nserver log:\n{server.log_text()[-3000:]}"
            assert result["cipher"] == scenario.data_ciphers[0]
            assert result["key_derivation"] == "tls-ekm"  # the 2.6 server agrees to EKM
            assert result["events"][:2] in (
                ["ConnectionRequested", "ProgressReported"],
                ["ResolutionRequested", "ConnectionRequested"],
            )
            assert "TunnelEstablished" in result["events"]

    @pytest.mark.parametrize("transport", ["udp", "tcp"])
    def test_engine_with_the_tls1_prf(transport: str, pki_files: PkiFiles, tmp_path: Path) -> None:
        """Without IV_PROTO bit 3 the server does not push tls-ekm: keys come from the PRF."""
        scenario = Scenario(transport=transport, protection=Protection.TLS_AUTH)
        with (
            netns_pair_context() as pair,
            OpenVpnServer.start(
                pair.server, scenario, pki_files, tmp_path / "server", pair.server_address
            ) as server,
        ):
            result = run_engine(pair, scenario, pki_files, tmp_path, "--prf")
            assert result.get("echo_reply"), f"{result}\nserver log:\n{server.log_text()[-3000:]}"
            assert result["key_derivation"] == "tls1-prf"

    def test_engine_without_ekm_is_refused_by_a_server_forcing_it(
        pki_files: PkiFiles, tmp_path: Path
    ) -> None:
        scenario = Scenario(protection=Protection.TLS_AUTH, force_ekm=True)
        with (
            netns_pair_context() as pair,
            OpenVpnServer.start(
                pair.server, scenario, pki_files, tmp_path / "server", pair.server_address
            ),
        ):
            result = run_engine(pair, scenario, pki_files, tmp_path, "--prf")
            assert not result.get("echo_reply")
            assert "authentication failed" in result.get("failure", ""), result
            assert result["events"][-1] == "SessionEnded"


if __name__ == "__main__":
    sys.exit(main())
