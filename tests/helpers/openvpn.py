"""A real OpenVPN 2.6 server (and the real client, the control case) inside test namespaces.

A `Scenario` is a small frozen value (transport, control-channel protection, ciphers, pushes...)
that turns into a server config and a matching client config (`server_config`, `client_config`).
The base server config is §10 of the protocol note: `dev tun`, `server 10.8.0.0 255.255.255.0`,
`topology subnet`, `keepalive`, `disable-dco`, `verb 4`.

    with netns_pair_context() as pair:
        files = write_pki(make_pki(), tmp_path / "pki")
        scenario = Scenario(transport="tcp", protection=Protection.TLS_CRYPT)
        with OpenVpnServer.start(pair.server, scenario, files, tmp_path) as server:
            with OpenVpnClient.start(pair.client, scenario, files, tmp_path, server.address):
                pair.client.run(["ping", "-c", "1", SERVER_TUN_ADDRESS])

The processes log (stdout and stderr) to files beside their configs; `log_text()` reads them and a
failure message always carries the tail of the log. Processes are stopped by PID.
"""

from __future__ import annotations

import enum
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.netns import Netns, stop_process
from tests.helpers.pki import PkiFiles

OPENVPN = shutil.which("openvpn") or "/usr/sbin/openvpn"
READY_LINE = "Initialization Sequence Completed"
START_TIMEOUT = 20.0  # seconds for "Initialization Sequence Completed"

TUNNEL_NETWORK = ipaddress.IPv4Network("10.8.0.0/24")
SERVER_TUN_ADDRESS = "10.8.0.1"
TUNNEL_NETWORK_IPV6 = ipaddress.IPv6Network("fd00:8::/64")
SERVER_TUN_ADDRESS_IPV6 = "fd00:8::1"
UNSPECIFIED = ipaddress.IPv4Address("0.0.0.0")


class Protection(enum.Enum):
    """Control-channel protection (what wraps P_CONTROL packets)."""

    NONE = "none"
    TLS_AUTH = "tls-auth"
    TLS_CRYPT = "tls-crypt"
    TLS_CRYPT_V2 = "tls-crypt-v2"


@dataclass(frozen=True)
class Scenario:
    transport: str = "udp"  # "udp" | "tcp"
    protection: Protection = Protection.TLS_AUTH
    data_ciphers: tuple[str, ...] = ("AES-256-GCM",)  # server's data-ciphers
    client_data_ciphers: tuple[str, ...] | None = None  # None: same as the server
    force_ekm: bool = False  # server `force-tls-key-material-export`
    topology: str = "subnet"
    keepalive: tuple[int, int] = (10, 60)
    push_routes: tuple[str, ...] = ()  # "192.168.100.0 255.255.255.0"
    push_dhcp_options: tuple[str, ...] = ()  # "DNS 10.8.0.1", "DOMAIN example.test"
    push_redirect_gateway: str | None = None  # e.g. "def1 bypass-dhcp"
    ipv6: bool = False  # `server-ipv6 fd00:8::/64`
    push_routes_ipv6: tuple[str, ...] = ()  # "fd00:99::/64"
    server_explicit_exit_notify: bool = False  # UDP: tell clients RESTART when stopping
    client_explicit_exit_notify: int = 0
    wrong_client_cert: bool = False  # the client presents a cert from another CA
    wrong_client_static_key: bool = False  # the client's tls-auth/tls-crypt key is not the server's
    port: int = 1194
    client_proto: str | None = None  # the client's `remote` proto (default: `transport`)
    extra_server: tuple[str, ...] = ()
    extra_client: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        parts = [self.transport, self.protection.value, "+".join(self.data_ciphers)]
        if self.force_ekm:
            parts.append("ekm")
        if self.ipv6:
            parts.append("ipv6")
        return "-".join(parts)


def server_config(scenario: Scenario, files: PkiFiles) -> str:
    proto = "udp" if scenario.transport == "udp" else "tcp-server"
    lines = [
        f"port {scenario.port}",
        f"proto {proto}",
        "dev tun",
        f"ca {files.ca}",
        f"cert {files.server_cert}",
        f"key {files.server_key}",
        "dh none",
        "server 10.8.0.0 255.255.255.0",
        f"topology {scenario.topology}",
        "keepalive {} {}".format(*scenario.keepalive),
        "disable-dco",
        "verb 4",
        f"data-ciphers {':'.join(scenario.data_ciphers)}",
    ]
    match scenario.protection:
        case Protection.NONE:
            pass
        case Protection.TLS_AUTH:
            lines.append(f"tls-auth {files.ta_key} 0")
        case Protection.TLS_CRYPT:
            lines.append(f"tls-crypt {files.ta_key}")
        case Protection.TLS_CRYPT_V2:
            lines.append(f"tls-crypt-v2 {files.tls_crypt_v2_server}")
    if scenario.force_ekm:
        lines.append("force-tls-key-material-export")
    if scenario.ipv6:
        lines.append(f"server-ipv6 {TUNNEL_NETWORK_IPV6}")
    lines += [f'push "route {route}"' for route in scenario.push_routes]
    lines += [f'push "route-ipv6 {route}"' for route in scenario.push_routes_ipv6]
    lines += [f'push "dhcp-option {option}"' for option in scenario.push_dhcp_options]
    if scenario.push_redirect_gateway is not None:
        lines.append(f'push "redirect-gateway {scenario.push_redirect_gateway}"')
    if scenario.server_explicit_exit_notify and scenario.transport == "udp":
        lines.append("explicit-exit-notify 1")
    lines += scenario.extra_server
    return "\n".join(lines) + "\n"


def client_config(
    scenario: Scenario, files: PkiFiles, remote: ipaddress.IPv4Address | str, *, real: bool
) -> str:
    """The client side of `scenario`, for the real openvpn (`real`) or for miragevpn-client.

    Only plain, standard directives are used, so the same text is valid for both; `real` adds
    what only the real client needs (`disable-dco`, `verb`)."""
    cert, key = (
        (files.wrong_client_cert, files.wrong_client_key)
        if scenario.wrong_client_cert
        else (files.client_cert, files.client_key)
    )
    static_key = files.wrong_ta_key if scenario.wrong_client_static_key else files.ta_key
    lines = [
        "client",
        "dev tun",
        f"remote {remote} {scenario.port} {scenario.client_proto or scenario.transport}",
        "nobind",
        f"ca {files.ca}",
        f"cert {cert}",
        f"key {key}",
        "remote-cert-tls server",
        f"data-ciphers {':'.join(scenario.client_data_ciphers or scenario.data_ciphers)}",
    ]
    match scenario.protection:
        case Protection.NONE:
            pass
        case Protection.TLS_AUTH:
            lines.append(f"tls-auth {static_key} 1")
        case Protection.TLS_CRYPT:
            lines.append(f"tls-crypt {static_key}")
        case Protection.TLS_CRYPT_V2:
            lines.append(f"tls-crypt-v2 {files.tls_crypt_v2_client}")
    if scenario.client_explicit_exit_notify and scenario.transport == "udp":
        lines.append(f"explicit-exit-notify {scenario.client_explicit_exit_notify}")
    if real:
        lines += ["disable-dco", "verb 4"]
    lines += scenario.extra_client
    return "\n".join(lines) + "\n"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class OpenVpnProcess:
    """A running openvpn (server or client) with its config and log files."""

    ns: Netns
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = self.ns.spawn([OPENVPN, "--config", str(self.config_path)], stdout=log)
        self.starts += 1

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ready_count(self) -> int:
        return self.log_text().count(READY_LINE)

    def wait_ready(self, timeout: float = START_TIMEOUT, *, count: int | None = None) -> None:
        """Wait until the log shows the `count`-th (default: this start's) READY_LINE."""
        want = self.starts if count is None else count
        deadline = time.monotonic() + timeout
        while self.ready_count() < want:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"openvpn exited with {self.proc.returncode} before {READY_LINE!r}:\n"
                    + _tail(self.log_path)
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"openvpn not ready after {timeout:g}s:\n" + _tail(self.log_path)
                )
            time.sleep(0.05)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = stop_process(self.proc)
        self.proc = None
        return code

    def __enter__(self) -> OpenVpnProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class OpenVpnServer(OpenVpnProcess):
    address: ipaddress.IPv4Address = UNSPECIFIED

    @classmethod
    def start(
        cls,
        ns: Netns,
        scenario: Scenario,
        files: PkiFiles,
        workdir: Path,
        address: ipaddress.IPv4Address,
    ) -> OpenVpnServer:
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "server.conf"
        config.write_text(server_config(scenario, files))
        server = cls(ns, config, workdir / "server.log", address=address)
        server.spawn()
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def restart(self) -> None:
        """Stop (SIGTERM, by PID) and start again with the same config; wait until ready."""
        self.stop()
        self.spawn()
        self.wait_ready()

    def __enter__(self) -> OpenVpnServer:
        return self


@dataclass
class OpenVpnClient(OpenVpnProcess):
    @classmethod
    def start(
        cls,
        ns: Netns,
        scenario: Scenario,
        files: PkiFiles,
        workdir: Path,
        remote: ipaddress.IPv4Address,
    ) -> OpenVpnClient:
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "openvpn-client.conf"
        config.write_text(client_config(scenario, files, remote, real=True))
        client = cls(ns, config, workdir / "openvpn-client.log")
        client.spawn()
        try:
            client.wait_ready()
        except BaseException:
            client.stop()
            raise
        return client

    def __enter__(self) -> OpenVpnClient:
        return self


def server_log_lines(server: OpenVpnServer, needle: str) -> Iterator[str]:
    return (line for line in server.log_text().splitlines() if needle in line)
