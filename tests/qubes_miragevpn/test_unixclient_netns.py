"""The unix client with the real tun device and netlink, in a namespace, with the scripted client.

This checks the runtime's whole data path against the kernel independently of the engine:
`ping 10.8.0.1` in the namespace → kernel → tun0 → session loop → (toy wire protocol over real
UDP on 127.0.0.1) → a toy "server" that answers echo requests → session loop → tun0 → ping gets
its reply.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import struct
import threading
from dataclasses import replace

import pytest

from miragevpn.config.model import Config, Proto, Remote
from miragevpn.events import RouteSpec
from qubes_miragevpn.unixclient import ExitCode, Outcome, UnixClient
from tests.helpers.fake_client import SETTINGS, ScriptedClient
from tests.helpers.ippacket import internet_checksum as checksum
from tests.helpers.netns import Netns, wait_until

pytestmark = pytest.mark.netns


def echo_reply(packet: bytes) -> bytes | None:
    """The ICMP echo reply to an IPv4 echo request, or None for anything else."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if packet[ihl] != 8:
        return None
    header = bytearray(packet[:ihl])
    header[12:16], header[16:20] = packet[16:20], packet[12:16]
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    icmp = bytearray(packet[ihl:])
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    return bytes(header) + bytes(icmp)


def test_ping_through_the_runtime_with_a_real_tun(netns: Netns) -> None:
    outcome: list[Outcome] = []
    started = threading.Event()
    state: dict[str, object] = {}

    def run_in_namespace() -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            server.bind(("127.0.0.1", 0))
            server.setblocking(False)
            port = server.getsockname()[1]

            def on_server_readable() -> None:
                data, peer = server.recvfrom(65535)
                if data == b"HELLO":
                    server.sendto(b"WELCOME", peer)
                elif data.startswith(b"D") and (reply := echo_reply(data[1:])) is not None:
                    server.sendto(b"D" + reply, peer)

            loop.add_reader(server.fileno(), on_server_readable)
            settings = replace(
                SETTINGS,
                routes=(RouteSpec(network=ipaddress.ip_network("192.0.2.0/24"), gateway=None),),
            )
            config = Config(
                client=True, remotes=(Remote(host="127.0.0.1", port=port, proto=Proto()),)
            )
            client = UnixClient(
                config,
                client_factory=lambda c, now: ScriptedClient(c, now, settings=settings),
                tun_name="tun%d",
                notify=lambda note: None,
            )
            state["stop"] = lambda: loop.call_soon_threadsafe(client.stop, signal.SIGTERM)
            started.set()
            try:
                outcome.append(await asyncio.wait_for(client.run(), 30))
            finally:
                loop.remove_reader(server.fileno())
                server.close()

        asyncio.run(main())

    thread = threading.Thread(target=lambda: netns.call(run_in_namespace, timeout=60))
    thread.start()
    try:
        assert started.wait(10)
        wait_until(
            lambda: "tun0" in netns.run(["ip", "-br", "addr"]).stdout, 10, what="tun0 to appear"
        )
        wait_until(
            lambda: "10.8.0.2/24" in netns.run(["ip", "-br", "addr", "show", "tun0"]).stdout,
            10,
            what="tun0 to be configured",
        )
        assert "192.0.2.0/24 dev tun0" in netns.run(["ip", "route"]).stdout
        result = netns.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.8.0.1"], check=False)
        assert "3 received" in result.stdout, result.stdout
        result = netns.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", "192.0.2.9"], check=False)
        assert "2 received" in result.stdout, result.stdout
    finally:
        stop = state.get("stop")
        if callable(stop):
            stop()
        thread.join(30)
    assert not thread.is_alive()
    assert outcome and outcome[0].exit_code is ExitCode.OK
    # everything undone: the tun device and its route are gone
    assert "tun0" not in netns.run(["ip", "-br", "link"]).stdout
    assert "192.0.2.0" not in netns.run(["ip", "route"]).stdout


def test_echo_reply_checksums() -> None:
    # a real echo request captured from Linux ping (10.8.0.2 → 10.8.0.1, id 1, seq 1)
    request = bytes.fromhex("45000054000040004001269a0a0800020a0800010800f7fc00010001" + "00" * 56)
    header = bytearray(request[:20])
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    icmp = bytearray(request[20:])
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    request = bytes(header) + bytes(icmp)
    reply = echo_reply(request)
    assert reply is not None
    assert checksum(reply[:20]) == 0 and checksum(reply[20:]) == 0
    assert reply[12:16] == request[16:20] and reply[20] == 0
