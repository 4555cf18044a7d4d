"""A simulated Qubes network in namespaces: sys-net, sys-vpn, two AppVMs, an uplink capture.

    sys-net ── vif5.0 ═══ eth0 (group 1) ── sys-vpn ── vif11.0 (group 2) ═══ eth0 ── appvm1
      lo: the "internet"                          │  ── vif12.0 (group 2) ═══ eth0 ── appvm2
      (servers, DNS, leak targets)                └──── tun0 ═══ eth0 ── tunnel peer (add_tunnel)

Addressing follows Qubes (network/setup-ip, vif-route-qubes, qubes/vm/mix/net.py): every qube
has a /32 (and a /128), a permanent neighbour entry for its gateway at fe:ff:ff:ff:ff:ff and a
default route `via gateway onlink`; each vif has proxy ARP (proxy NDP), the netvm gateway address
as /32 and a host route to its AppVM with metric 32752-domid. sys-vpn's uplink is in interface
group 1, its vifs in group 2; Qubes' own `ip qubes`, `ip6 qubes` and `inet qubes-nat-accel`
tables are loaded as qubes-iptables and vif-route-qubes load them (tests/helpers/qubes_tables.py;
without kernel flowtables, qubes-accel counts what it would offload: `offload_candidates()`);
forwarding is on, as qubes-network leaves it. sys-net serves the uplink DNS (10.139.1.1/.2)
itself; its "internet" addresses sit on its loopback. Captures are tcpdump -w files read by
tests/helpers/pcap.py.

The daemon's tests run the real OpenVPN server in `sysnet` on `server4` (a host address there)
and the daemon in `sysvpn` with `topo.facts(mark)`; the firewall's own tests stand a veth in for
the tunnel (`add_tunnel`).

    with qubes_topology() as topo:
        web = topo.serve(topo.sysnet, topo.web4, 80, tag=b"sys-net web")
        with topo.capture() as cap:
            probe = topo.probe(topo.appvms[0].ns, topo.web4, 80)
        assert cap.frames_from_sysvpn() == []

Everything is inside namespaces; processes are stopped by PID; namespaces are deleted on exit.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import select
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qubes_miragevpn.gateway.policy import Facts
from tests.helpers.netns import IP, Netns, stop_process, wait_until
from tests.helpers.pcap import Frame, parse_pcap
from tests.helpers.qubes_tables import nat_accel_table, qubes_tables

A4 = ipaddress.IPv4Address
A6 = ipaddress.IPv6Address
Address = A4 | A6

BACKEND_MAC = "fe:ff:ff:ff:ff:ff"  # Xen's backend vif MAC, the gateway of every qube
SYSVPN_MAC = "00:16:3e:5e:6c:0a"
DEFAULT_MARK = 0x6D76  # the socket mark the topology tests give the daemon's sockets
SO_MARK = getattr(socket, "SO_MARK", 36)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)

_SYSVPN4 = A4("10.137.0.10")
_SYSVPN6 = A6("fd09:24ef:4179::a89:a")
_GATEWAY4 = A4("10.137.0.5")
_GATEWAY6 = A6("fd09:24ef:4179::a89:5")
_NETVM_GATEWAY4 = A4("10.138.0.1")
_NETVM_GATEWAY6 = A6("fd09:24ef:4179::a8a:1")
_SERVER4 = A4("198.51.100.1")
_WEB4 = A4("198.51.100.80")
_DNS4 = A4("198.51.100.53")
_LEAK4 = A4("203.0.113.66")
_SERVER6 = A6("2001:db8:100::1")
_WEB6 = A6("2001:db8:100::80")
_LEAK6 = A6("2001:db8:66::66")
_UPLINK_DNS = (A4("10.139.1.1"), A4("10.139.1.2"))
_VIRTUAL_DNS = (A4("10.139.1.1"), A4("10.139.1.2"))


@dataclass(frozen=True)
class AppVM:
    """An AppVM namespace behind sys-vpn's `vif` (group 2)."""

    ns: Netns
    vif: str
    ip4: A4
    ip6: A6
    mac: str


@dataclass(frozen=True)
class TunnelPeer:
    """The stand-in tunnel: `device` in sys-vpn, a veth to the `ns` namespace (the VPN's side)."""

    ns: Netns
    device: str
    mtu: int
    local4: A4  # sys-vpn's tunnel address
    peer4: A4  # the VPN server's tunnel address; also its DNS resolver
    ipv6: bool
    local6: A6 | None
    peer6: A6 | None


@dataclass
class Responder:
    """A TCP and UDP responder in a namespace: answers every connection/datagram with `tag`.

    `seen` lists the source addresses it heard from (proves which path a packet took)."""

    tag: bytes
    sockets: list[socket.socket]
    seen: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Responder:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="responder")
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(self.sockets, [], [], 0.1)
            for sock in ready:
                with contextlib.suppress(OSError):
                    if sock.type == socket.SOCK_STREAM:
                        conn, peer = sock.accept()
                        with conn:
                            self.seen.append(peer[0])
                            conn.sendall(self.tag)
                    else:
                        _, peer = sock.recvfrom(2048)
                        self.seen.append(peer[0])
                        sock.sendto(self.tag, peer)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        for sock in self.sockets:
            sock.close()


@dataclass(frozen=True)
class Probe:
    """The outcome of one connection attempt: 'ok' (reply read), 'refused' (TCP reset),
    'unreachable' (ICMP error), 'denied' (EPERM: dropped by our own output chain), 'timeout'."""

    outcome: str
    seconds: float
    reply: bytes = b""

    @property
    def failed_fast(self) -> bool:
        return self.outcome in ("refused", "unreachable", "denied") and self.seconds < 1.0


_ERRNO_OUTCOME = {
    errno.ECONNREFUSED: "refused",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    errno.EACCES: "unreachable",
    errno.EPERM: "denied",
    errno.ETIMEDOUT: "timeout",
}


@dataclass
class Capture:
    """tcpdump -w on sys-net's end of the uplink; `frames` filled when the capture stops."""

    path: Path
    frames: list[Frame] = field(default_factory=list)

    def frames_from_sysvpn(self) -> list[Frame]:
        """Every frame sys-vpn sent to sys-net (ARP aside: it carries no payload)."""
        return [f for f in self.frames if f.src_mac == SYSVPN_MAC and f.ethertype != 0x0806]


@dataclass
class QubesTopology:
    sysnet: Netns
    sysvpn: Netns
    appvms: list[AppVM]
    # sys-vpn's uplink facts (QubesDB /qubes-ip, /qubes-gateway, ...)
    uplink: str = "eth0"
    sysvpn4: A4 = _SYSVPN4
    sysvpn6: A6 = _SYSVPN6
    gateway4: A4 = _GATEWAY4  # sys-net, as sys-vpn's /qubes-gateway
    gateway6: A6 = _GATEWAY6
    uplink_dns: tuple[A4, ...] = _UPLINK_DNS  # served by sys-net
    # what sys-vpn gives its AppVMs (/qubes-netvm-gateway, -gateway6, -primary/secondary-dns)
    netvm_gateway4: A4 = _NETVM_GATEWAY4
    netvm_gateway6: A6 = _NETVM_GATEWAY6
    virtual_dns: tuple[A4, ...] = _VIRTUAL_DNS
    # the "internet" behind sys-net
    server4: A4 = _SERVER4  # room for the OpenVPN server
    web4: A4 = _WEB4
    dns4: A4 = _DNS4
    leak4: A4 = _LEAK4  # only a leak reaches this
    server6: A6 = _SERVER6
    web6: A6 = _WEB6
    leak6: A6 = _LEAK6
    flowtable: bool = True  # False: the kernel has no flowtables; qubes-accel only counts
    tunnels: list[TunnelPeer] = field(default_factory=list)
    responders: list[Responder] = field(default_factory=list)
    extra_ns: list[Netns] = field(default_factory=list)

    def facts(self, socket_mark: int = DEFAULT_MARK) -> Facts:
        """The firewall facts sys-vpn's QubesDB would give the daemon in this topology."""
        return Facts(
            socket_mark=socket_mark,
            uplink=self.uplink,
            connected_ips=self.connected_ips,
            virtual_dns=self.virtual_dns,
            uplink_dns=self.uplink_dns,
        )

    @property
    def sysnet_vif(self) -> str:
        return "vif5.0"

    @property
    def connected_ips(self) -> frozenset[Address]:
        """/connected-ips and /connected-ips6 as sys-vpn's QubesDB would list them."""
        return frozenset([*(a.ip4 for a in self.appvms), *(a.ip6 for a in self.appvms)])

    # --- traffic helpers -------------------------------------------------------------------

    def serve(self, ns: Netns, address: Address, port: int, *, tag: bytes) -> Responder:
        """A TCP+UDP responder on address:port inside `ns`, stopped when the topology closes."""

        def bind() -> list[socket.socket]:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            tcp = socket.socket(family, socket.SOCK_STREAM)
            udp = socket.socket(family, socket.SOCK_DGRAM)
            for sock in (tcp, udp):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((str(address), port))
            tcp.listen(16)
            return [tcp, udp]

        responder = Responder(tag, ns.call(bind)).start()
        self.responders.append(responder)
        return responder

    @staticmethod
    def probe(
        ns: Netns,
        address: Address,
        port: int,
        *,
        proto: str = "tcp",
        timeout: float = 2.0,
        mark: int | None = None,
        source: Address | None = None,
    ) -> Probe:
        """One TCP connection (or UDP datagram) from `ns` to address:port, waiting for a reply."""

        def attempt() -> Probe:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
            start = time.monotonic()
            with socket.socket(family, kind) as sock:
                sock.settimeout(timeout)
                if mark is not None:
                    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
                if source is not None:
                    sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                    sock.bind((str(source), 0))
                try:
                    sock.connect((str(address), port))
                    if proto == "udp":
                        sock.send(b"query")
                    reply = sock.recv(2048)
                except TimeoutError:
                    return Probe("timeout", time.monotonic() - start)
                except OSError as e:
                    outcome = _ERRNO_OUTCOME.get(e.errno or 0, f"errno {e.errno}")
                    return Probe(outcome, time.monotonic() - start)
                return Probe("ok", time.monotonic() - start, reply)

        return ns.call(attempt, timeout=timeout + 5)

    @staticmethod
    def ping(ns: Netns, address: Address, *, timeout: float = 2.0) -> Probe:
        """One ping; 'ok', 'unreachable' (an ICMP error came back), 'denied' or 'timeout'."""
        argv = ["ping", "-n", "-c", "1", "-W", str(int(timeout)), str(address)]
        if address.version == 6:
            argv.insert(1, "-6")
        start = time.monotonic()
        result = ns.run(argv, timeout=timeout + 10, check=False)
        seconds = time.monotonic() - start
        text = result.stdout + result.stderr
        if result.returncode == 0:
            return Probe("ok", seconds)
        if "not permitted" in text:
            return Probe("denied", seconds)
        if "rohibited" in text or "filtered" in text or "nreachable" in text:
            return Probe("unreachable", seconds)
        return Probe("timeout", seconds)

    @contextlib.contextmanager
    def capture(
        self,
        where: Netns | None = None,
        interface: str | None = None,
        sentinel_to: A4 | None = None,
    ) -> Iterator[Capture]:
        """Capture while the block runs, parsed after: by default on sys-net's end of the
        uplink. A sentinel datagram from `where` to `sentinel_to` (default: sys-vpn's uplink
        address) proves the capture live before the block and complete after it."""
        where = where or self.sysnet
        interface = interface or self.sysnet_vif
        target = sentinel_to or self.sysvpn4
        fd, name = tempfile.mkstemp(prefix="mvpn-uplink-", suffix=".pcap")
        os.close(fd)
        errfd, errname = tempfile.mkstemp(prefix="mvpn-tcpdump-", suffix=".log")
        cap = Capture(Path(name))
        with os.fdopen(errfd, "w") as err:
            proc = where.spawn(
                ["tcpdump", "-i", interface, "-n", "-p", "-U", "-s", "256", "-w", name],
                stdout=err,
                stderr=err,
            )
        try:
            wait_until(
                lambda: "listening on" in Path(errname).read_text() or proc.poll() is not None,
                10.0,
                what="tcpdump to start",
            )
            if proc.poll() is not None:
                raise RuntimeError(f"tcpdump exited: {Path(errname).read_text()}")
            _sentinel(where, target, Path(name))  # live once the sentinel is in the file
            yield cap
            _sentinel(where, target, Path(name))  # and everything before it is in the file
        finally:
            stop_process(proc)
            where.processes.remove(proc)
            cap.frames = parse_pcap(Path(name).read_bytes())
            os.unlink(name)
            os.unlink(errname)

    def offload_candidates(self) -> int:
        """Packets that reached Qubes' qubes-accel chain as group 2 -> group 1 TCP/UDP: each one
        would have been (or was) offloaded past every later forward rule."""
        for rule in self.sysvpn.json(["nft", "-j", "list", "table", "inet", "qubes-nat-accel"])[
            "nftables"
        ]:
            if "rule" in rule and rule["rule"].get("comment") == "offload":
                for stmt in rule["rule"]["expr"]:
                    if "counter" in stmt:
                        return int(stmt["counter"]["packets"])
        return 0

    # --- the stand-in tunnel ------------------------------------------------------------------

    def add_tunnel(
        self, *, mtu: int = 1400, ipv6: bool = False, device: str = "tun0"
    ) -> TunnelPeer:
        """A veth `device` in sys-vpn to a "tunnel peer" namespace that also hosts the web
        address (answering with another tag), with routes as `redirect-gateway def1` sets them
        and the host route to the server endpoint via the uplink (what the daemon adds)."""
        peer = Netns.create("vpnpeer")
        self.extra_ns.append(peer)
        local4, peer4 = A4("10.8.0.2"), A4("10.8.0.1")
        local6, peer6 = (A6("fd08::2"), A6("fd08::1")) if ipv6 else (None, None)
        _veth(self.sysvpn, device, peer, "eth0")
        for ns, dev in ((self.sysvpn, device), (peer, "eth0")):
            ns.run(["ip", "link", "set", dev, "mtu", str(mtu), "up"])
        self.sysvpn.run(["ip", "addr", "add", f"{local4}/24", "dev", device])
        peer.run(["ip", "addr", "add", f"{peer4}/24", "dev", "eth0"])
        _local_addresses(peer, [self.web4, self.leak4], [self.web6, self.leak6] if ipv6 else [])
        for half in ("0.0.0.0/1", "128.0.0.0/1"):
            self.sysvpn.run(["ip", "route", "add", half, "via", str(peer4), "dev", device])
        self.sysvpn.run(
            [
                "ip",
                "route",
                "add",
                str(self.server4),
                "via",
                str(self.gateway4),
                "dev",
                self.uplink,
                "onlink",
            ]
        )
        if ipv6 and local6 and peer6:
            self.sysvpn.run(["ip", "-6", "addr", "add", f"{local6}/64", "dev", device, "nodad"])
            peer.run(["ip", "-6", "addr", "add", f"{peer6}/64", "dev", "eth0", "nodad"])
            peer.run(["ip", "-6", "route", "add", "default", "via", str(local6)])
            for half in ("::/1", "8000::/1"):
                self.sysvpn.run(
                    ["ip", "-6", "route", "add", half, "via", str(peer6), "dev", device]
                )
        tunnel = TunnelPeer(peer, device, mtu, local4, peer4, ipv6, local6, peer6)
        self.tunnels.append(tunnel)
        return tunnel

    def close(self) -> None:
        for responder in self.responders:
            responder.close()
        for ns in [*self.extra_ns, *(a.ns for a in self.appvms), self.sysvpn, self.sysnet]:
            ns.close()


def _sentinel(where: Netns, target: A4, pcap: Path) -> None:
    """Send datagrams from `where` to `target` port 9 until the capture file grows."""
    size = pcap.stat().st_size

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"mvpn capture sentinel", (str(target), 9))

    deadline = time.monotonic() + 10.0
    while pcap.stat().st_size == size:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the capture in {where.name} never saw its sentinel datagram")
        where.call(send)
        time.sleep(0.05)


def _veth(a: Netns, a_name: str, b: Netns, b_name: str) -> None:
    """A veth pair created under random names straight in `a` and `b`, then renamed there."""
    tag = secrets.token_hex(3)
    ta, tb = f"mq{tag}a", f"mq{tag}b"
    subprocess.run(
        [
            IP,
            "link",
            "add",
            ta,
            "netns",
            a.name,
            "type",
            "veth",
            "peer",
            "name",
            tb,
            "netns",
            b.name,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    a.run(["ip", "link", "set", ta, "name", a_name])
    b.run(["ip", "link", "set", tb, "name", b_name])


def _local_addresses(ns: Netns, v4: list[A4], v6: list[A6]) -> None:
    """Addresses on the namespace's loopback: its "internet" hosts (no dummy module needed)."""
    for a4 in v4:
        ns.run(["ip", "addr", "add", f"{a4}/32", "dev", "lo"])
    for a6 in v6:
        ns.run(["ip", "-6", "addr", "add", f"{a6}/128", "dev", "lo", "nodad"])


def _sysctl(ns: Netns, *settings: str) -> None:
    ns.run(["sysctl", "-q", "-w", *settings])


@contextlib.contextmanager
def qubes_topology(appvm_count: int = 2) -> Iterator[QubesTopology]:
    """Build sys-net, sys-vpn (Qubes' tables, forwarding on) and `appvm_count` AppVMs."""
    namespaces: list[Netns] = []
    try:
        sysnet = Netns.create("sysnet")
        namespaces.append(sysnet)
        sysvpn = Netns.create("sysvpn")
        namespaces.append(sysvpn)
        topo = QubesTopology(sysnet, sysvpn, [])
        _build_uplink(topo)
        for index in range(appvm_count):
            ns = Netns.create(f"appvm{index + 1}")
            namespaces.append(ns)
            topo.appvms.append(_build_appvm(topo, ns, index))
        vifs = [(a.vif, a.ip4, a.ip6) for a in topo.appvms]
        sysvpn.run(["nft", "-f", "-"], input=qubes_tables(vifs, topo.uplink_dns))
        devices = [topo.uplink, *(a.vif for a in topo.appvms)]
        accel = sysvpn.run(
            ["nft", "-f", "-"], input=nat_accel_table(devices, flowtable=True), check=False
        )
        if accel.returncode != 0:
            topo.flowtable = False
            sysvpn.run(["nft", "-f", "-"], input=nat_accel_table(devices, flowtable=False))
        _sysctl(sysvpn, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    except BaseException:
        for ns in reversed(namespaces):
            ns.close()
        raise
    try:
        yield topo
    finally:
        topo.close()


def _build_uplink(topo: QubesTopology) -> None:
    net, vpn, vif, up = topo.sysnet, topo.sysvpn, topo.sysnet_vif, topo.uplink
    _veth(net, vif, vpn, up)
    net.run(["ip", "link", "set", vif, "address", BACKEND_MAC])
    vpn.run(["ip", "link", "set", up, "address", SYSVPN_MAC])
    # sys-net: the "internet", its own resolver addresses, and vif-route-qubes for sys-vpn.
    _local_addresses(
        net,
        [topo.server4, topo.web4, topo.dns4, topo.leak4, *topo.uplink_dns],
        [topo.server6, topo.web6, topo.leak6],
    )
    _sysctl(net, f"net.ipv4.conf.{vif.replace('.', '/')}.proxy_arp=1")
    net.run(["ip", "link", "set", vif, "up"])
    net.run(["ip", "addr", "add", f"{topo.gateway4}/32", "dev", vif])
    net.run(["ip", "-6", "addr", "add", f"{topo.gateway6}/128", "dev", vif, "nodad"])
    net.run(["ip", "route", "add", str(topo.sysvpn4), "dev", vif])
    net.run(["ip", "-6", "route", "add", str(topo.sysvpn6), "dev", vif])
    for address in (topo.sysvpn4, topo.sysvpn6):
        net.run(["ip", "neigh", "replace", str(address), "lladdr", SYSVPN_MAC, "dev", vif,
                 "nud", "permanent"])  # fmt: skip
    # sys-vpn: network/setup-ip for eth0.
    vpn.run(["ip", "link", "set", up, "group", "1", "up"])
    vpn.run(["ip", "addr", "add", f"{topo.sysvpn4}/32", "dev", up])
    vpn.run(["ip", "-6", "addr", "add", f"{topo.sysvpn6}/128", "dev", up, "nodad"])
    for gateway in (topo.gateway4, topo.gateway6):
        vpn.run(["ip", "neigh", "replace", str(gateway), "lladdr", BACKEND_MAC, "dev", up,
                 "nud", "permanent"])  # fmt: skip
        vpn.run(["ip", "route", "add", str(gateway), "dev", up, "scope", "link"])
        vpn.run(["ip", "route", "add", "default", "via", str(gateway), "dev", up, "onlink"])


def _build_appvm(topo: QubesTopology, ns: Netns, index: int) -> AppVM:
    domid = 11 + index
    vif = f"vif{domid}.0"
    app = AppVM(
        ns,
        vif,
        A4(f"10.137.0.{21 + index}"),
        A6(f"fd09:24ef:4179::a89:{21 + index:x}"),
        f"00:16:3e:5e:6c:{domid:02x}",
    )
    vpn = topo.sysvpn
    _veth(vpn, vif, ns, "eth0")
    vpn.run(["ip", "link", "set", vif, "address", BACKEND_MAC])
    ns.run(["ip", "link", "set", "eth0", "address", app.mac])
    # vif-route-qubes online
    _sysctl(vpn, f"net.ipv4.conf.{vif.replace('.', '/')}.proxy_arp=1")
    vpn.run(["ip", "link", "set", vif, "group", "2", "up"])
    metric = str(32752 - domid)
    vpn.run(["ip", "route", "add", str(app.ip4), "dev", vif, "metric", metric])
    vpn.run(["ip", "-6", "route", "add", str(app.ip6), "dev", vif, "metric", metric])
    vpn.run(["ip", "addr", "add", f"{topo.netvm_gateway4}/32", "dev", vif])
    vpn.run(["ip", "-6", "addr", "add", f"{topo.netvm_gateway6}/128", "dev", vif, "nodad"])
    _sysctl(vpn, f"net.ipv6.conf.{vif.replace('.', '/')}.proxy_ndp=1")
    for address in (app.ip4, app.ip6):
        vpn.run(["ip", "neigh", "replace", str(address), "lladdr", app.mac, "dev", vif,
                 "nud", "permanent"])  # fmt: skip
    # the AppVM's setup-ip
    ns.run(["ip", "link", "set", "eth0", "up"])
    ns.run(["ip", "addr", "add", f"{app.ip4}/32", "dev", "eth0"])
    ns.run(["ip", "-6", "addr", "add", f"{app.ip6}/128", "dev", "eth0", "nodad"])
    for gateway in (topo.netvm_gateway4, topo.netvm_gateway6):
        ns.run(["ip", "neigh", "replace", str(gateway), "lladdr", BACKEND_MAC, "dev", "eth0",
                "nud", "permanent"])  # fmt: skip
        ns.run(["ip", "route", "add", str(gateway), "dev", "eth0", "scope", "link"])
        ns.run(["ip", "route", "add", "default", "via", str(gateway), "dev", "eth0", "onlink"])
    return app
