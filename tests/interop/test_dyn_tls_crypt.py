"""Dynamic tls-crypt and `reneg-sec max min` of the engine's `Client` against a real OpenVPN 2.6
server (dyncrypt.py; OpenVPN ssl.c, tls_crypt.c).

As in test_renegotiation, the test starts the server in one namespace and runs this module as a
program (`python -m tests.interop.test_dyn_tls_crypt CONFIG GOAL [--probe] [--prf]`) in the
client namespace. The program drives `Client` over UDP or TCP (what the config says), sends an
ICMP echo request to the server's tun address every `ECHO_INTERVAL` seconds once the tunnel is
up, and stops once GOAL renegotiations have finished and `SETTLE` more seconds passed. It prints
one JSON line: echo requests and replies, the key ids of the data packets both ways, and the
client's progress messages with their times (seconds since the tunnel came up).

`--probe` (UDP): one second after the tunnel came up, the program sends the server a soft reset
for key id 1 in our session, wrapped the way key id 0 is (the configured tls-crypt, tls-crypt-v2,
tls-auth or no wrapping, with a fresh replay id). With dynamic tls-crypt the server must refuse
it ("tls-crypt unwrapping failed"); without (`--prf` announces neither EKM nor IV_PROTO bit 9),
the same packet begins a renegotiation at once: the control case.

At verb 7 the server logs, for every control packet it reads, the replay window of the wrap that
took it: the tests read from it that each packet of a renegotiation was unwrapped with the
dynamic key ("TLS_WRAP_RENEG"), and in the control case with the static one ("TLS_WRAP").
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.reneg_driver import EchoLedger, is_data, run_driver

DRIVER_TIMEOUT = 60.0
ECHO_INTERVAL = 0.25
SETTLE = 6.0  # seconds after the last wanted renegotiation (> the 3 s send switch)
REPLY_GRACE = 1.0  # an echo request younger than this at the end may still be unanswered
PROBE_AFTER = 1.0  # seconds after the tunnel came up
PROBE_REPLAY_AHEAD = 20  # the probe's replay id: ours so far + this (inside the window of 64)


def replay_field(config: Any, packet: bytes) -> tuple[int, int] | None:
    """(replay id, time) of one of our control packets under key id 0's wrapping."""
    from miragevpn.config.model import TlsAuth, TlsCrypt, TlsCryptV2
    from miragevpn.tls_wrap import TLS_AUTH_DIGESTS

    protection = config.tls_protection
    if isinstance(protection, TlsCrypt | TlsCryptV2):
        start = 9  # byte0 | session id | replay id | time | tag ...
    elif isinstance(protection, TlsAuth):
        start = 9 + TLS_AUTH_DIGESTS[config.auth.upper().replace("-", "")]  # after the HMAC
    else:
        return None
    return int.from_bytes(packet[start : start + 4]), int.from_bytes(packet[start + 4 : start + 8])


def probe_packet(config: Any, my_session_id: bytes, replay: tuple[int, int] | None) -> bytes:
    """A soft reset for key id 1 wrapped with key id 0's (configured) wrapping, its replay id
    fresh and its time ours: under that key the server's replay window would take it."""
    from miragevpn.config.model import TlsAuth, TlsCrypt, TlsCryptV2
    from miragevpn.packet import ControlPacket, Opcode
    from miragevpn.tls_wrap import ControlChannelWrap, PlainWrap, TlsAuthWrap, TlsCryptWrap

    protection = config.tls_protection
    wrap: ControlChannelWrap
    last_id, last_time = replay or (0, 0)
    fresh = {"next_replay_id": last_id + PROBE_REPLAY_AHEAD, "time": last_time}
    if isinstance(protection, TlsAuth):
        wrap = TlsAuthWrap(protection.key, protection.direction, config.auth, **fresh)
    elif isinstance(protection, TlsCrypt | TlsCryptV2):  # v2: Kc, as the server unwraps it
        wrap = TlsCryptWrap(protection.key, **fresh)
    else:
        wrap = PlainWrap()
    packet = ControlPacket(
        opcode=Opcode.P_CONTROL_SOFT_RESET_V1,
        key_id=1,
        session_id=my_session_id,
        acks=(),
        remote_session_id=None,
        sequence_number=0,
        payload=b"",
    )
    return wrap.wrap(packet, time.time())


def drive(config_path: str, goal: int, *, probe: bool, tls_ekm: bool) -> dict[str, Any]:
    from miragevpn.client import Client
    from miragevpn.config.model import Transport
    from miragevpn.events import (
        ConnectionRequested,
        ProgressReported,
        SessionEnded,
        SessionRestarting,
        TunnelEstablished,
    )
    from miragevpn.framing import StreamDecoder, encode_frame
    from qubes_miragevpn.cli import load_config

    config = load_config(Path(config_path))
    client = Client(
        config, rng=os.urandom, now=time.monotonic(), wall_clock=time.time, tls_ekm=tls_ekm
    )
    result: dict[str, Any] = {"progress": []}
    ledger = EchoLedger(ECHO_INTERVAL, REPLY_GRACE)
    sock: socket.socket | None = None
    tcp = False
    peek = StreamDecoder()  # TCP: our own split of what the server sends, to count key ids
    source: bytes | None = None
    my_session_id: bytes | None = None  # from our first wire packet: byte0 | session id
    my_replay: tuple[int, int] | None = None  # of our newest control packet (key id 0)
    up_at: float | None = None
    probed = False
    goal_reached_at: float | None = None
    deadline = time.monotonic() + DRIVER_TIMEOUT

    def finish(failure: str | None) -> dict[str, Any]:
        return ledger.finish(result, client, failure)

    def send(wire: bytes) -> None:
        assert sock is not None
        if tcp:
            sock.sendall(wire)
        else:
            sock.send(wire)

    while time.monotonic() < deadline:
        now = time.monotonic()
        while (event := client.next_event()) is not None:
            if isinstance(event, ConnectionRequested):
                tcp = event.transport is Transport.TCP
                sock = socket.socket(
                    socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
                )
                sock.settimeout(10)
                sock.connect((str(event.address), event.port))
                sock.setblocking(False)
                client.handle_connected(now=time.monotonic())
            elif isinstance(event, TunnelEstablished):
                assert event.settings.ipv4 is not None
                source = event.settings.ipv4.ip.packed
                up_at = time.monotonic()
            elif isinstance(event, ProgressReported):
                at = None if up_at is None else round(time.monotonic() - up_at, 3)
                result["progress"].append([at, event.message])
            elif isinstance(event, SessionRestarting | SessionEnded):
                return finish(event.reason)
        if sock is None:
            return finish("the client asked for no connection")
        for wire in client.data_to_send(now=now):
            packet = wire[2:] if tcp else wire  # TCP: after the 2-byte length
            if my_session_id is None:
                my_session_id = packet[1:9]
            if not is_data(packet) and packet[0] & 7 == 0:
                my_replay = replay_field(config, packet)
            ledger.count(ledger.sent_kids, packet)
            send(wire)
        if probe and not probed and up_at is not None and now - up_at >= PROBE_AFTER:
            assert my_session_id is not None
            wire = probe_packet(config, my_session_id, my_replay)
            send(encode_frame(wire) if tcp else wire)
            probed = True
            result["probe_at"] = round(now - up_at, 3)
        if source is not None:
            ledger.echo(client, source, now, send, framing=2 if tcp else 0)
        timer = client.get_timer()
        wait = 0.05 if timer is None else min(max(timer - time.monotonic(), 0.0), 0.05)
        readable, _, _ = select.select([sock], [], [], wait)
        if readable:
            data = sock.recv(65536)
            if not data:
                return finish("the server closed the connection")
            for packet in peek.feed(data) if tcp else [data]:
                ledger.count(ledger.received_kids, packet)
            client.receive(data, now=time.monotonic())
            ledger.take_replies(client)
        timer = client.get_timer()
        if timer is not None and time.monotonic() >= timer:
            client.handle_timer(now=time.monotonic())
        if goal_reached_at is None and client.stats.renegotiations >= goal:
            goal_reached_at = time.monotonic()
        if goal_reached_at is not None and time.monotonic() - goal_reached_at >= SETTLE:
            client.close(now=time.monotonic())
            for wire in client.data_to_send(now=time.monotonic()):
                send(wire)
            return finish(None)
    return finish("timed out")


def main() -> int:
    flags = sys.argv[3:]
    goal = int(sys.argv[2])
    result = drive(sys.argv[1], goal, probe="--probe" in flags, tls_ekm="--prf" not in flags)
    print(json.dumps(result))
    return 0 if "failure" not in result else 1


# --------------------------------------------------------------------------- the tests

if __name__ != "__main__":
    from tests.helpers.netns import NetnsPair, netns_pair_context
    from tests.helpers.openvpn import OpenVpnServer, Protection, Scenario
    from tests.helpers.pki import PkiFiles

    pytestmark = pytest.mark.interop

    PYTHON = sys.executable  # the driver runs on the stack under test
    DYNAMIC_NOTE = "renegotiations use a dynamic tls-crypt key (protocol-flags dyn-tls-crypt)"
    # crypto.c: init_key_ctx at verb 4 (D_CIPHER_INIT), for the key tls_crypt.c makes
    SERVER_DYNAMIC_KEY = (
        "Outgoing dynamic tls-crypt: Cipher 'AES-256-CTR' initialized with 256 bit key",
        "Incoming dynamic tls-crypt: Cipher 'AES-256-CTR' initialized with 256 bit key",
    )
    UNWRAP_FAILED = "tls-crypt unwrapping failed"

    def drive_in(
        pair: NetnsPair, scenario: Scenario, files: PkiFiles, tmp: Path, goal: int, *flags: str
    ) -> dict[str, Any]:
        return run_driver(
            pair,
            scenario,
            files,
            tmp,
            str(goal),
            *flags,
            python=PYTHON,
            module="tests.interop.test_dyn_tls_crypt",
            timeout=DRIVER_TIMEOUT + 15,
        )

    def progress_at(result: dict[str, Any], message: str) -> float:
        """When (seconds after the tunnel came up) the client reported `message`."""
        times = [at for at, text in result["progress"] if text == message]
        assert len(times) == 1, (message, result)
        assert times[0] is not None, result
        return float(times[0])

    def check_tunnel(result: dict[str, Any], server: OpenVpnServer, *, goal: int) -> str:
        log = server.log_text()
        context = f"{result}\nserver log:\n{log[-5000:]}"
        assert "failure" not in result and result["returncode"] == 0, context
        assert result["renegotiations"] >= goal, context
        assert result["requests"] >= 20, context
        assert result["lost"] == [], context  # ping went on across every renegotiation
        assert result["dropped"] == {}, context
        assert set(range(goal + 1)) <= set(map(int, result["sent_kids"])), context
        assert set(range(1, goal + 1)) <= set(map(int, result["received_kids"])), context
        for complaint in ("key IDs out of sync", "Decrypt error", "AUTH_FAILED"):
            assert complaint not in log, context
        return context

    def check_dynamic_key(result: dict[str, Any], server: OpenVpnServer, context: str) -> None:
        """We announced IV_PROTO bit 9; the server made the key once, after key id 0's TLS
        handshake, with key id 0's data keys, and pushed dyn-tls-crypt; we took it."""
        log = server.log_text()
        assert "IV_PROTO=654" in log, context
        assert [t for _, t in result["progress"]].count(DYNAMIC_NOTE) == 1, context
        handshake = log.index("Control Channel: TLS")
        push_reply = log.index("PUSH_REPLY,")
        assert "protocol-flags cc-exit tls-ekm dyn-tls-crypt" in log[push_reply:], context
        for line in SERVER_DYNAMIC_KEY:
            assert log.count(line) == 1, context
            assert handshake < log.index(line) < push_reply, context

    @pytest.mark.parametrize(
        ("transport", "protection"),
        [
            ("udp", Protection.TLS_CRYPT),
            ("tcp", Protection.TLS_CRYPT),
            ("udp", Protection.TLS_CRYPT_V2),
            ("tcp", Protection.TLS_CRYPT_V2),
            ("udp", Protection.TLS_AUTH),
            ("udp", Protection.NONE),
        ],
        ids=lambda v: v if isinstance(v, str) else v.value,
    )
    def test_the_servers_renegotiations_go_under_the_dynamic_key(
        transport: str, protection: Protection, pki_files: PkiFiles, tmp_path: Path
    ) -> None:
        """Server `reneg-sec 8`: two renegotiations, ping all along; over UDP a soft reset for
        key id 1 under key id 0's wrapping (the probe) is refused by the server, whose own
        renegotiation comes only at reneg-sec: so the renegotiations that worked were under
        the dynamic key, on both sides."""
        scenario = Scenario(
            transport=transport,
            protection=protection,
            extra_server=("reneg-sec 8",),
            extra_client=("hand-window 3",),
        )
        probe = transport == "udp"
        with (
            netns_pair_context() as pair,
            OpenVpnServer.start(
                pair.server, scenario, pki_files, tmp_path / "server", pair.server_address
            ) as server,
        ):
            flags = ("--probe",) if probe else ()
            result = drive_in(pair, scenario, pki_files, tmp_path, 2, *flags)
            context = check_tunnel(result, server, goal=2)
            check_dynamic_key(result, server, context)
            log = server.log_text()
            assert log.count("TLS: soft reset") >= 2, context  # the server's reneg-sec
            for kid in (1, 2):
                began = progress_at(result, f"server renegotiates keys (key id {kid})")
                assert began >= 8 * kid - 1.5, context
                assert progress_at(result, f"new data keys (key id {kid})") > began, context
            assert not any("we renegotiate" in text for _, text in result["progress"]), context
            if probe:
                assert result["probe_at"] < 2.0, context
                assert log.count(UNWRAP_FAILED) == 1, context  # the probe, and only it
                assert log.count("TLS Error") == 1, context
            else:
                assert "TLS Error" not in log, context

    READ_CONTROL = re.compile(r" READ \[\d+\] from .*: P_(?:CONTROL\w*|ACK_V1) kid=(\d)")
    PID_TEST = re.compile(r" PID_TEST \[\d+\] \[(TLS_WRAP\w*)-\d+\]")

    def windows_by_key_id(log: str) -> list[tuple[int, str]]:
        """(key id, replay window) of each control packet the server read, at verb 7: the
        PID_TEST line after its READ line names the window of the wrap that unwrapped it
        (packet_id.c; "TLS_WRAP" is key id 0's, "TLS_WRAP_RENEG" the dynamic key's)."""
        out: list[tuple[int, str]] = []
        pending: int | None = None
        for line in log.splitlines():
            if (read := READ_CONTROL.search(line)) is not None:
                pending = int(read.group(1))
            elif (test := PID_TEST.search(line)) is not None and pending is not None:
                out.append((pending, test.group(1)))
                pending = None
        return out

    @pytest.mark.parametrize("transport", ["udp", "tcp"])
    def test_the_servers_verb_7_log_shows_each_renegotiation_packet_under_the_dynamic_key(
        transport: str, pki_files: PkiFiles, tmp_path: Path
    ) -> None:
        """At verb 7 the server logs every control packet it reads and the replay window that
        took it: key id 0's under the configured tls-crypt-v2 key, every packet of the
        renegotiation (key id 1) under the dynamic key's window, its replay ids from 1."""
        scenario = Scenario(
            transport=transport,
            protection=Protection.TLS_CRYPT_V2,
            extra_server=("reneg-sec 6", "verb 7"),
            extra_client=("hand-window 3",),
        )
        with (
            netns_pair_context() as pair,
            OpenVpnServer.start(
                pair.server, scenario, pki_files, tmp_path / "server", pair.server_address
            ) as server,
        ):
            result = drive_in(pair, scenario, pki_files, tmp_path, 1)
            context = check_tunnel(result, server, goal=1)
            check_dynamic_key(result, server, context)
            log = server.log_text()
            windows = windows_by_key_id(log)
            renegotiation = [window for kid, window in windows if kid == 1]
            assert len(renegotiation) >= 5, (windows, context)
            assert set(renegotiation) == {"TLS_WRAP_RENEG"}, (windows, context)
            assert {w for kid, w in windows if kid == 0} == {"TLS_WRAP"}, (windows, context)
            first = next(line for line in log.splitlines() if "[TLS_WRAP_RENEG-" in line)
            assert re.search(r"\] 0:0 \d+:1 t=", first), first  # the dynamic counter's id 1

    def test_without_dynamic_tls_crypt_the_probe_is_a_renegotiation(
        pki_files: PkiFiles, tmp_path: Path
    ) -> None:
        """The control case: a client announcing neither EKM nor IV_PROTO bit 9 gets no
        dyn-tls-crypt; the server takes the same probe under the static tls-crypt key and
        renegotiates key id 1 at once (long before its reneg-sec 60), with us, every packet
        of it under the static key's replay window (verb 7)."""
        scenario = Scenario(
            transport="udp",
            protection=Protection.TLS_CRYPT,
            extra_server=("reneg-sec 60", "verb 7"),
            extra_client=("hand-window 3",),
        )
        with (
            netns_pair_context() as pair,
            OpenVpnServer.start(
                pair.server, scenario, pki_files, tmp_path / "server", pair.server_address
            ) as server,
        ):
            result = drive_in(pair, scenario, pki_files, tmp_path, 1, "--probe", "--prf")
            log = server.log_text()
            context = f"{result}\nserver log:\n{log[-5000:]}"
            assert "failure" not in result and result["returncode"] == 0, context
            assert result["renegotiations"] == 1 and result["lost"] == [], context
            assert "IV_PROTO=134" in log, context
            assert "dynamic tls-crypt" not in log and UNWRAP_FAILED not in log, context
            assert DYNAMIC_NOTE not in [t for _, t in result["progress"]], context
            began = progress_at(result, "server renegotiates keys (key id 1)")
            assert result["probe_at"] <= began < result["probe_at"] + 2.0, context
            windows = windows_by_key_id(log)
            assert len([kid for kid, _ in windows if kid == 1]) >= 5, (windows, context)
            assert {window for _, window in windows} == {"TLS_WRAP"}, (windows, context)

    @pytest.mark.parametrize("transport", ["udp", "tcp"])
    def test_reneg_sec_max_min_renegotiates_within_the_window(
        transport: str, pki_files: PkiFiles, tmp_path: Path
    ) -> None:
        """Client `reneg-sec 9 5` (server `reneg-sec 0`): the session's value N is in 6..9,
        and our renegotiations begin N seconds after each key became active, under the
        dynamic tls-crypt key, ping all along."""
        scenario = Scenario(
            transport=transport,
            protection=Protection.TLS_CRYPT,
            extra_server=("reneg-sec 0",),
            extra_client=("reneg-sec 9 5", "hand-window 3"),
        )
        with (
            netns_pair_context() as pair,
            OpenVpnServer.start(
                pair.server, scenario, pki_files, tmp_path / "server", pair.server_address
            ) as server,
        ):
            result = drive_in(pair, scenario, pki_files, tmp_path, 2)
            context = check_tunnel(result, server, goal=2)
            check_dynamic_key(result, server, context)
            chosen = [
                float(text.split()[3])
                for _, text in result["progress"]
                if text.startswith("keys renegotiated every ")
            ]
            assert len(chosen) == 1 and chosen[0] in (6.0, 7.0, 8.0, 9.0), context
            seconds = chosen[0]
            first = progress_at(result, "we renegotiate keys (key id 1)")
            assert seconds - 0.5 <= first <= seconds + 1.5, context
            active = progress_at(result, "new data keys (key id 1)")
            second = progress_at(result, "we renegotiate keys (key id 2)")
            assert seconds - 0.5 <= second - active <= seconds + 1.5, context
            log = server.log_text()
            assert "TLS: soft reset" not in log and "TLS Error" not in log, context


if __name__ == "__main__":
    sys.exit(main())
