"""The daemon's control plane: a root-only Unix socket answering JSON, one request per line.

    request  {"command": "status"}                  answer {"ok": true, "status": {...}}
             {"command": "reconnect"}               answer {"ok": true}
             {"command": "profile", "name": "x"}    answer {"ok": true}  (selection written,
                                                    the daemon reconnects; firewall closed)
             {"command": "answer", "code": "123"}   answer {"ok": true}  (the one-time code
                                                    the session waits for; never logged)
    errors   {"ok": false, "error": "words"}

`snapshot` is pure: the daemon's state (a `View`) and the clock in, the documented status
mapping out (field names in docs/status.md are stable; new fields may be added). The socket
lives in /run/qubes-miragevpn/ (directory 0700, socket 0600, both root's), so only root can
ask or command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .lifecycle import Asking, Dialing, Held, Phase, Resolving, Up, Waiting, status_line

log = logging.getLogger(__name__)

CONTROL_DIR = Path("/run/qubes-miragevpn")
SOCKET_NAME = "control.sock"
MAX_REQUEST = 4096  # bytes in one request line
CLIENT_TIMEOUT = 10.0  # seconds a command-line request waits for the daemon
STATUS_VERSION = 1


class ControlError(Exception):
    """The daemon cannot be asked (not running, not root) or refused the request."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Traffic:
    """Tunnel traffic as the kernel counts it on the tun device: `out` towards the VPN
    (AppVM packets the daemon encrypts), `in` from the VPN."""

    bytes_out: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    packets_in: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class View:
    """Everything `snapshot` reads: taken from the daemon at one moment."""

    phase: Phase
    since: float  # wall-clock time the current state began
    profile: str | None
    addresses: tuple[str, ...] = ()  # tunnel addresses with prefix
    traffic: Traffic | None = None
    last_handshake: float | None = None  # wall clock: tunnel up
    last_renegotiation: float | None = None
    renegotiations: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    blocked: tuple[Mapping[str, Any], ...] = ()  # the blocked-traffic report (gateway.blocked)
    report_mode: str = "off"  # how refused flows reach the daemon: queue, counters or off


def state_of(phase: Phase) -> str:
    """blocked / connecting / connected: what an AppVM's traffic does now."""
    match phase:
        case Up():
            return "connected"
        case Dialing() | Resolving():
            return "connecting"
        case Held() | Waiting() | Asking():
            return "blocked"


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


def snapshot(view: View, *, now: float) -> dict[str, Any]:
    """The status mapping of docs/status.md, from `view` at wall-clock `now`."""
    phase = view.phase
    server: dict[str, Any] | None = None
    retry_in: float | None = None
    held = isinstance(phase, Held)
    code: dict[str, Any] | None = None
    match phase:
        case Dialing(endpoint=e):
            server = {"address": str(e.address), "port": e.port, "proto": e.proto}
        case Up(tunnel=t):
            e = t.endpoint
            server = {"address": str(e.address), "port": e.port, "proto": e.proto}
        case Waiting(retry_in=r) if r > 0:
            retry_in = r
        case Asking(text=text, dynamic=dynamic, timeout=timeout):
            left = max(0, round(view.since + timeout - now))
            code = {"text": text, "dynamic": dynamic, "seconds_left": left}
    traffic = view.traffic
    return {
        "version": STATUS_VERSION,
        "state": state_of(phase),
        "why": status_line(phase),
        "held": held,
        "retry_in": retry_in,
        "profile": view.profile,
        "server": server,
        "tunnel_addresses": list(view.addresses) if isinstance(phase, Up) else [],
        "since": _iso(view.since),
        "seconds_in_state": max(0, round(now - view.since)),
        "traffic": None
        if traffic is None
        else {
            "bytes_out": traffic.bytes_out,
            "packets_out": traffic.packets_out,
            "bytes_in": traffic.bytes_in,
            "packets_in": traffic.packets_in,
        },
        "last_handshake": _iso(view.last_handshake),
        "last_renegotiation": _iso(view.last_renegotiation),
        "renegotiations": view.renegotiations,
        "last_error": view.last_error,
        "last_error_at": _iso(view.last_error_at),
        "blocked_traffic": [dict(entry) for entry in view.blocked],
        "blocked_report": view.report_mode,
        "one_time_code": code,
    }


def read_tun_traffic(ifname: str, *, sysfs: Path = Path("/sys/class/net")) -> Traffic | None:
    """The tun device's kernel counters (tx: towards the daemon, so out to the VPN)."""
    base = sysfs / ifname / "statistics"
    try:
        values = {
            name: int((base / name).read_text())
            for name in ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets")
        }
    except (OSError, ValueError):
        return None
    return Traffic(
        bytes_out=values["tx_bytes"],
        packets_out=values["tx_packets"],
        bytes_in=values["rx_bytes"],
        packets_in=values["rx_packets"],
    )


def render(status: Mapping[str, Any]) -> str:
    """`qubes-miragevpn status` for people."""
    lines = [f"state: {status['state']} ({status['why']})"]
    lines.append(f"profile: {status.get('profile') or '(none)'}")
    server = status.get("server")
    if server:
        lines.append(f"server: {server['address']} port {server['port']} over {server['proto']}")
    if status.get("tunnel_addresses"):
        lines.append("tunnel addresses: " + ", ".join(status["tunnel_addresses"]))
    lines.append(f"since: {status['since']} ({status['seconds_in_state']} s)")
    traffic = status.get("traffic")
    if traffic:
        lines.append(
            f"traffic: out {traffic['packets_out']} packets ({traffic['bytes_out']} bytes), "
            f"in {traffic['packets_in']} packets ({traffic['bytes_in']} bytes)"
        )
    lines.append(f"last handshake: {status.get('last_handshake') or 'never'}")
    lines.append(
        f"last renegotiation: {status.get('last_renegotiation') or 'never'} "
        f"({status.get('renegotiations', 0)} in this session)"
    )
    code = status.get("one_time_code")
    if code:
        lines.append(
            f"one-time code wanted: {code['text']} (sudo qubes-miragevpn answer CODE; "
            f"{code['seconds_left']} s left)"
        )
    if status.get("last_error"):
        lines.append(f"last error: {status['last_error']} (at {status['last_error_at']})")
    blocked = status.get("blocked_traffic") or []
    if blocked:
        lines.append(f"blocked traffic (reported by {status.get('blocked_report')}):")
        for entry in blocked:
            source, target = entry.get("source") or {}, entry.get("destination") or {}
            who = source.get("address")
            if source.get("name"):
                who = f"{source['name']} ({who})"
            host = str(target.get("address"))
            host = f"[{host}]" if ":" in host else host
            lines.append(
                f"  {who} -> {host}:{target.get('port')}/{target.get('proto')}: "
                f"{entry.get('packets')} packets, last {entry.get('last_seen')}"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the server


class Controlled(Protocol):
    """What the control socket needs of the daemon."""

    def view(self) -> View: ...
    def reconnect(self) -> None: ...
    def answer(self, code: str) -> str | None: ...


SelectProfile = Callable[[str], None]


def handle(
    request: Mapping[str, Any],
    daemon: Controlled,
    select_profile: SelectProfile | None,
    *,
    now: float,
) -> dict[str, Any]:
    """One request's answer (pure but for the daemon's calls)."""
    command = request.get("command")
    if command == "status":
        return {"ok": True, "status": snapshot(daemon.view(), now=now)}
    if command == "reconnect":
        daemon.reconnect()
        return {"ok": True}
    if command == "profile":
        name = request.get("name")
        if not isinstance(name, str) or not name:
            return {"ok": False, "error": "profile: give the profile's file name"}
        if select_profile is None:
            return {"ok": False, "error": "profile: this daemon cannot write the selection"}
        try:
            select_profile(name)
        except (OSError, ValueError) as e:
            return {"ok": False, "error": f"profile: {e}"}
        return {"ok": True}
    if command == "answer":
        code = request.get("code")
        if not isinstance(code, str) or not code or not code.isprintable():
            return {"ok": False, "error": "answer: give the one-time code"}
        refused = daemon.answer(code)
        return {"ok": True} if refused is None else {"ok": False, "error": f"answer: {refused}"}
    return {
        "ok": False,
        "error": f"unknown command {command!r} (status, reconnect, profile, answer)",
    }


def _decode(line: bytes) -> Mapping[str, Any]:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    return request


class ControlServer:
    """The Unix socket in `directory`, answering until closed."""

    def __init__(
        self,
        daemon: Controlled,
        *,
        directory: Path = CONTROL_DIR,
        select_profile: SelectProfile | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self._daemon = daemon
        self._directory = directory
        self._select_profile = select_profile
        self._clock = clock or time.time
        self._server: asyncio.AbstractServer | None = None

    @property
    def path(self) -> Path:
        return self._directory / SOCKET_NAME

    async def start(self) -> None:
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self._directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise ControlError(f"{self._directory} is not a directory of ours: not listening")
        os.chmod(self._directory, 0o700)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT)
            if len(line) > MAX_REQUEST:
                answer: dict[str, Any] = {"ok": False, "error": "request too long"}
            else:
                try:
                    answer = handle(
                        _decode(line), self._daemon, self._select_profile, now=self._clock()
                    )
                except ValueError as e:
                    answer = {"ok": False, "error": str(e)}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, OSError, asyncio.LimitOverrunError, ValueError) as e:
            log.debug("control client: %s", e)
        except Exception as e:  # a bug must not end the daemon
            log.error("control request failed: %r", e)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# --------------------------------------------------------------------------- the client


def request(
    message: Mapping[str, Any],
    *,
    directory: Path = CONTROL_DIR,
    timeout: float = CLIENT_TIMEOUT,
) -> dict[str, Any]:
    """Send one request to the running daemon; its answer (ControlError if none)."""
    path = directory / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n") and len(data) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except FileNotFoundError:
            raise ControlError(f"the daemon is not running (no {path})") from None
        except PermissionError:
            raise ControlError(f"cannot reach {path}: only root may (use sudo)") from None
        except OSError as e:
            raise ControlError(f"cannot talk to the daemon at {path}: {e}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError("the daemon's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise ControlError("the daemon's answer is not a JSON object")
    return answer
