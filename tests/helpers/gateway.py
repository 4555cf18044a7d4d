"""The gateway daemon in a simulated Qubes network: the world the topology tests and the demo share.

    with built_world(tmp, {"udp.ovpn": (UDP, ())}) as world:
        start_server(world, "udp", UDP)            # a real OpenVPN 2.6 server in sys-net
        world.start_daemon()                       # `qubes-miragevpn run` in sys-vpn
        world.wait_through_tunnel(time.monotonic(), "first connect")
        with world.topo.capture() as cap: ...      # sys-vpn's uplink, seen from sys-net
        assert world.leaks(cap) == []

The daemon runs as a real process (`python -m qubes_miragevpn.gateway.cli run`) with a
`--qubesdb-file` standing in for QubesDB and a NOTIFY_SOCKET standing in for systemd. Every
responder answers with a tag naming who answered and records the source address it saw.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.netns import stop_process, wait_until
from tests.helpers.openvpn import OpenVpnServer, Protection, Scenario, client_config
from tests.helpers.pki import PkiFiles, make_pki, write_pki
from tests.helpers.qubes_topology import (
    Address,
    Capture,
    Frame,
    QubesTopology,
    Responder,
    qubes_topology,
)

RECOVERY_LIMIT = 15.0  # seconds; loose on purpose (the targets: 3 s and 1 s)
PROBE_TIMEOUT = 1.0
UDP = Scenario(
    transport="udp",
    protection=Protection.TLS_CRYPT,
    keepalive=(1, 5),
    push_redirect_gateway="def1",
    push_dhcp_options=("DNS 198.51.100.53",),
    server_explicit_exit_notify=True,
    # a real server has one public address; here sys-net has many, so replies must say which
    extra_server=("local 198.51.100.1", "reneg-sec 30"),
)
# The second profile: TCP on 443, its own tunnel subnet (the later `server` line wins).
TCP = Scenario(
    transport="tcp",
    protection=Protection.TLS_CRYPT,
    keepalive=(1, 5),
    push_redirect_gateway="def1",
    push_dhcp_options=("DNS 198.51.100.53",),
    port=443,
    extra_server=("local 198.51.100.1", "server 10.9.0.0 255.255.255.0"),
)


# ---------------------------------------------------------------- helpers


class NotifyListener:
    """The NOTIFY_SOCKET systemd would give the daemon: records (monotonic time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            self.messages.append((time.monotonic(), data.decode(errors="replace")))

    def first(self, needle: str, after: float = 0.0) -> float | None:
        return next((t for t, m in self.messages if t >= after and needle in m), None)

    def status(self) -> str:
        """The last STATUS= line."""
        for _, message in reversed(self.messages):
            for line in message.splitlines():
                if line.startswith("STATUS="):
                    return line[len("STATUS=") :]
        return ""

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@dataclass
class World:
    topo: QubesTopology
    tmp: Path
    files: PkiFiles
    config_dir: Path
    facts_path: Path
    notify: NotifyListener
    web: Responder
    vpn_dns: Responder
    uplink_dns: list[Responder]
    uplink_resolver: DnsResponder | None = None
    servers: dict[str, OpenVpnServer] = field(default_factory=dict)
    daemon: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0
    profile: str = "udp.ovpn"
    timings: dict[str, float] = field(default_factory=dict)
    uplink_ipv6: bool = False  # the facts give the uplink /qubes-ip6 and /qubes-gateway6
    server_addresses: tuple[Address, ...] = ()  # the profiles' server endpoints (default: server4)

    # --- the daemon

    def qubes_miragevpn(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "qubes_miragevpn.gateway.cli", *args]

    def start_daemon(self, *extra: str) -> float:
        """`qubes-miragevpn run` in sys-vpn; `extra`: more options of `run`."""
        self.starts += 1
        self.log_path = self.tmp / f"daemon-{self.starts}.log"
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), PYTHONUNBUFFERED="1",
                   WATCHDOG_USEC="4000000")  # fmt: skip
        argv = self.qubes_miragevpn(
            "--log-level", "debug", "run", "--qubesdb-file", str(self.facts_path),
            "--config-dir", str(self.config_dir), "--control-dir", str(self.control_dir),
            *extra,
        )  # fmt: skip
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.daemon = self.topo.sysvpn.spawn(argv, stdout=log, env=env)
        return started

    @property
    def control_dir(self) -> Path:
        """The daemon's control socket folder (not /run: tests run side by side)."""
        return self.tmp / "control"

    def control(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`qubes-miragevpn ARGS --control-dir ...` (status, reconnect, profile)."""
        argv = [*self.qubes_miragevpn(*args), "--control-dir", str(self.control_dir)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    def daemon_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop_daemon(self) -> int:
        assert self.daemon is not None
        code = stop_process(self.daemon)
        self.daemon = None
        return code

    def kill_daemon(self) -> None:
        assert self.daemon is not None
        self.daemon.kill()
        self.daemon.wait(10)
        self.daemon = None

    def set_facts(self, *, profile: str | None = None, appvms: int | None = None) -> None:
        """Rewrite the QubesDB stand-in (the daemon polls it): profile selection, and how many
        AppVMs /connected-ips lists."""
        if profile is not None:
            self.profile = profile
        self.facts_path.write_text(
            facts_yaml(self.topo, profile=self.profile, appvms=appvms, ipv6=self.uplink_ipv6)
        )

    # --- traffic

    def fetch(self, app: int = 0, timeout: float = PROBE_TIMEOUT) -> bytes | None:
        probe = self.topo.probe(self.topo.appvms[app].ns, self.topo.web4, 80, timeout=timeout)
        return probe.reply if probe.outcome == "ok" else None

    def wait_through_tunnel(self, since: float, what: str, *, report: bool = True) -> float:
        """Seconds from `since` until appvm1 fetches the page; asserts it came via a tunnel."""
        try:
            wait_until(lambda: self.fetch() == b"web", RECOVERY_LIMIT + 5, interval=0.02,
                       what=f"appvm1 to fetch the page ({what})")  # fmt: skip
        except TimeoutError:
            servers = "\n".join(
                f"--- server {name}:\n{server.log_text()[-2000:]}"
                for name, server in self.servers.items()
            )
            raise AssertionError(
                f"{what}: not connected\n--- daemon:\n{self.daemon_log()[-4000:]}\n{servers}"
            ) from None
        seconds = time.monotonic() - since
        assert self.web.seen and self.web.seen[-1].startswith(("10.8.0.", "10.9.0.")), self.web.seen
        self.timings[what] = seconds
        if report:
            print(f"\n[recovery] {what}: {seconds:.2f} s")
        return seconds

    def session_endpoints(self) -> set[tuple[str, int, int]]:
        """(address, IP protocol, port) of every profile's server."""
        servers = [str(a) for a in self.server_addresses or (self.topo.server4,)]
        return {
            (s, proto, port) for s in servers for proto, port in ((17, UDP.port), (6, TCP.port))
        }

    def leaks(self, cap: Capture, *, uplink_dns: bool = False) -> list[Frame]:
        """Frames sys-vpn sent to sys-net that are not the encrypted session (nor, with
        `uplink_dns`, a DNS query to the uplink's resolvers)."""
        allowed = self.session_endpoints()
        if uplink_dns:
            allowed |= {(str(a), 17, 53) for a in self.topo.uplink_dns}
        ours = {str(self.topo.sysvpn4), str(self.topo.sysvpn6)}
        return [
            f
            for f in cap.frames_from_sysvpn()
            if not (f.src in ours and (f.dst, f.proto, f.dport) in allowed)
        ]


def facts_yaml(
    topo: QubesTopology, *, profile: str | None, appvms: int | None = None, ipv6: bool = False
) -> str:
    connected = topo.appvms[:appvms]
    apps4 = " ".join(str(a.ip4) for a in connected)
    apps6 = " ".join(str(a.ip6) for a in connected)
    lines = [
        f"/qubes-ip: '{topo.sysvpn4}'",
        f"/qubes-gateway: '{topo.gateway4}'",
        f"/qubes-primary-dns: '{topo.uplink_dns[0]}'",
        f"/qubes-secondary-dns: '{topo.uplink_dns[1]}'",
        f"/qubes-netvm-network: '{topo.netvm_gateway4}'",
        f"/qubes-netvm-gateway: '{topo.netvm_gateway4}'",
        f"/qubes-netvm-primary-dns: '{topo.virtual_dns[0]}'",
        f"/qubes-netvm-secondary-dns: '{topo.virtual_dns[1]}'",
        f"/qubes-netvm-gateway6: '{topo.netvm_gateway6}'",
        f"/connected-ips: '{apps4}'",
        f"/connected-ips6: '{apps6}'",
        "/qubes-service/qubes-miragevpn: '1'",
    ]
    if ipv6:  # dom0 writes these when the uplink qube offers IPv6
        lines += [f"/qubes-ip6: '{topo.sysvpn6}'", f"/qubes-gateway6: '{topo.gateway6}'"]
    if profile is not None:
        lines.append(f"/vm-config/miragevpn-profile: '{profile}'")
    return "\n".join(lines) + "\n"


def probe_everything(world: World) -> None:
    """What an AppVM (and the qube itself) might send while blocked: none of it may leave."""
    topo = world.topo
    for app in topo.appvms:
        topo.probe(app.ns, topo.web4, 80, timeout=0.3)
        topo.probe(app.ns, topo.leak4, 443, timeout=0.3)
        topo.probe(app.ns, topo.virtual_dns[0], 53, proto="udp", timeout=0.3)
        topo.probe(app.ns, topo.web6, 80, timeout=0.3)
    topo.probe(topo.sysvpn, topo.leak4, 80, timeout=0.3)  # the qube's own processes


@contextlib.contextmanager
def busy(world: World, app: int = 1) -> Iterator[list[str]]:
    """appvm2 keeps trying to reach the web server (and the leak target) in the background:
    traffic is there to leak at every moment of the event under test."""
    outcomes: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        ns = world.topo.appvms[app].ns
        while not stop.is_set():
            outcomes.append(world.topo.probe(ns, world.topo.web4, 80, timeout=0.3).outcome)
            world.topo.probe(ns, world.topo.leak4, 80, timeout=0.2)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        thread.join(10)


def assert_no_leaks(world: World, cap: Capture, what: str) -> None:
    leaks = world.leaks(cap)
    assert leaks == [], f"{what}: {len(leaks)} frames left sys-vpn outside the session:\n" + (
        "\n".join(map(str, leaks[:20]))
    )


# ---------------------------------------------------------------- the uplink's resolver


@dataclass
class DnsResponder:
    """The uplink's DNS server (Qubes' 10.139.1.1/.2 as sys-net serves them): answers A and
    AAAA queries for `names` (each name: its addresses, comma-separated, of either family),
    records (source, name, type) of every query and (source, None, 0) for anything that is not
    a DNS query."""

    sockets: list[socket.socket]
    names: dict[str, str]
    queries: list[tuple[str, str | None, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> DnsResponder:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="dns")
        self._thread.start()
        return self

    def _loop(self) -> None:
        import select

        while not self._stop.is_set():
            ready, _, _ = select.select(self.sockets, [], [], 0.1)
            for sock in ready:
                with contextlib.suppress(OSError):
                    data, peer = sock.recvfrom(2048)
                    reply = self._answer(data, peer[0])
                    if reply is not None:
                        sock.sendto(reply, peer)

    def _answer(self, data: bytes, source: str) -> bytes | None:
        labels, offset = [], 12
        while len(data) > 12 and offset < len(data) and data[offset] and len(labels) < 64:
            labels.append(data[offset + 1 : offset + 1 + data[offset]].decode(errors="replace"))
            offset += 1 + data[offset]
        if len(data) < offset + 5 or data[2] & 0x80:
            self.queries.append((source, None, 0))
            return None
        name, qtype = ".".join(labels), int.from_bytes(data[offset + 1 : offset + 3], "big")
        self.queries.append((source, name, qtype))
        question = data[12 : offset + 5]
        known = self.names.get(name)
        records = []
        for text in known.split(",") if known is not None else []:
            packed = ipaddress.ip_address(text).packed
            if (qtype, len(packed)) in ((1, 4), (28, 16)):  # A, AAAA
                # a pointer to the question's name, type, class IN, TTL 60, the address
                records.append(
                    b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(packed)) + packed
                )
        rcode = 0 if known is not None else 3
        header = data[:2] + bytes([0x81, 0x80 | rcode]) + b"\x00\x01"
        header += len(records).to_bytes(2, "big") + b"\x00\x00\x00\x00"
        return header + question + b"".join(records)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        for sock in self.sockets:
            sock.close()


def serve_dns(topo: QubesTopology, names: dict[str, str]) -> DnsResponder:
    """A DnsResponder on every uplink DNS address, in sys-net."""

    def bind() -> list[socket.socket]:
        found = []
        for address in topo.uplink_dns:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((str(address), 53))
            found.append(sock)
        return found

    return DnsResponder(topo.sysnet.call(bind), names).start()


# ---------------------------------------------------------------- the world


@contextlib.contextmanager
def built_world(
    tmp: Path,
    profiles: dict[str, tuple[Scenario, tuple[str, ...]]],
    *,
    remote: str | None = None,
    uplink_names: dict[str, str] | None = None,
    uplink_ipv6: bool = False,
    server_addresses: tuple[Address, ...] = (),
) -> Iterator[World]:
    """Topology, PKI, the profiles (name: scenario, extra client lines) in the config folder,
    the facts file selecting the first profile, the responders; everything stopped at the end.

    `remote`: the profiles' `remote` (default: the server's address). `uplink_names`: the
    uplink's DNS servers are a real resolver for these names (`world.uplink_resolver`) instead
    of tag responders that only a leak would reach. `uplink_ipv6`: the facts carry the uplink's
    IPv6 address and gateway (/qubes-ip6, /qubes-gateway6), as with an IPv6-enabled sys-net.
    `server_addresses`: every endpoint the session may legitimately dial (default: an address
    `remote`, else the server's IPv4 address)."""
    with qubes_topology() as topo:
        config_dir = tmp / "config"
        config_dir.mkdir(mode=0o700)
        files = write_pki(make_pki(), config_dir)
        for name, (scenario, extra) in profiles.items():
            text = client_config(scenario, files, remote or topo.server4, real=False)
            (config_dir / name).write_text(text + "".join(line + "\n" for line in extra))
            os.chmod(config_dir / name, 0o600)
        first = next(iter(profiles))
        facts_path = tmp / "qubesdb.yaml"
        facts_path.write_text(facts_yaml(topo, profile=first, ipv6=uplink_ipv6))
        notify = NotifyListener(tmp / "notify.sock")
        world = World(
            topo=topo,
            tmp=tmp,
            files=files,
            config_dir=config_dir,
            facts_path=facts_path,
            notify=notify,
            web=topo.serve(topo.sysnet, topo.web4, 80, tag=b"web"),
            vpn_dns=topo.serve(topo.sysnet, topo.dns4, 53, tag=b"vpn-dns"),
            uplink_dns=[]
            if uplink_names is not None
            else [topo.serve(topo.sysnet, a, 53, tag=b"uplink-dns") for a in topo.uplink_dns],
            uplink_resolver=serve_dns(topo, uplink_names) if uplink_names is not None else None,
            profile=first,
            uplink_ipv6=uplink_ipv6,
            server_addresses=server_addresses
            or ((ipaddress.ip_address(remote or ""),) if _is_address(remote) else ()),
        )
        try:
            yield world
        finally:
            if world.uplink_resolver is not None:
                world.uplink_resolver.close()
            if world.daemon is not None:
                stop_process(world.daemon)
            for server in world.servers.values():
                server.stop()
            notify.close()


def _is_address(text: str | None) -> bool:
    try:
        ipaddress.ip_address(text or "")
    except ValueError:
        return False
    return True


def start_server(world: World, name: str, scenario: Scenario) -> OpenVpnServer:
    server = OpenVpnServer.start(
        world.topo.sysnet, scenario, world.files, world.tmp / name, world.topo.server4
    )
    world.servers[name] = server
    return server


# ---------------------------------------------------------------- the story, in order
