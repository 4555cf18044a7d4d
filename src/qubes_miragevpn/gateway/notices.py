"""Telling people: state changes in the journal in plain words, and desktop notifications on
connect, disconnect, block, AUTH_FAILED and a one-time code wanted, for the qube's default
user (/default-user in QubesDB; Qubes shows a qube's notifications in dom0), rate-limited.

    notice_for(old, new)     pure: which notice a phase change makes, if any
    RateLimit                pure: at most BURST desktop notices per WINDOW seconds, and the
                             same kind not again within SAME_KIND seconds (a flapping server
                             gives one "disconnected", not one a second)
    Notifier                 the IO: log every notice, `runuser -u USER -- notify-send ...`
                             for those the limit lets through, in the background, bounded
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field

from miragevpn.printable import printable

from .lifecycle import Asking, Held, Phase, Up

log = logging.getLogger("qubes-miragevpn")

APP_NAME = "qubes-miragevpn"
WINDOW = 60.0  # seconds
BURST = 4  # desktop notices per WINDOW at most
SAME_KIND = 30.0  # seconds before the same kind of notice shows again
SEND_TIMEOUT = 10.0  # seconds a notify-send may take
AUTH_FAILED = "AUTH_FAILED"


class Kind(enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    BLOCKED = "blocked"
    AUTH_FAILED = "auth-failed"
    CODE_WANTED = "code-wanted"


@dataclass(frozen=True, slots=True)
class Notice:
    kind: Kind
    title: str
    body: str
    urgency: str = "normal"  # notify-send's --urgency: low, normal, critical


def notice_for(old: Phase | None, new: Phase) -> Notice | None:
    """The notice of a phase change: connected (the tunnel came up), disconnected (it went
    down), blocked / AUTH_FAILED (held blocked until someone acts), a one-time code wanted;
    None otherwise."""
    if isinstance(new, Asking):
        if isinstance(old, Asking) and old.text == new.text:
            return None
        return Notice(
            Kind.CODE_WANTED,
            "VPN needs a one-time code",
            f"{printable(new.text)}. In the VPN qube run: sudo qubes-miragevpn answer CODE "
            f"(within {new.timeout:.0f}s). AppVMs stay blocked meanwhile.",
            "critical",
        )
    if isinstance(new, Up):
        if isinstance(old, Up):
            return None
        return Notice(Kind.CONNECTED, "VPN connected", f"AppVMs use the tunnel: {new.summary}")
    if isinstance(new, Held):
        if isinstance(old, Held) and old.reason == new.reason:
            return None
        if AUTH_FAILED in new.reason:
            return Notice(
                Kind.AUTH_FAILED,
                "VPN login refused",
                f"The server refused the credentials ({new.reason}). AppVMs stay blocked; "
                "fix the credentials file, then run qubes-miragevpn reconnect.",
                "critical",
            )
        return Notice(
            Kind.BLOCKED,
            "VPN blocked",
            f"AppVMs are blocked: {new.reason}",
            "critical",
        )
    if isinstance(old, Up):
        return Notice(
            Kind.DISCONNECTED,
            "VPN disconnected",
            "AppVMs are blocked until the tunnel is back "
            f"({getattr(new, 'reason', 'reconnecting')}).",
        )
    return None


@dataclass(slots=True)
class RateLimit:
    """Pure rate limit over monotonic times (`allow(kind, now)` records what it lets pass)."""

    window: float = WINDOW
    burst: int = BURST
    same_kind: float = SAME_KIND
    _sent: list[float] = field(default_factory=list)
    _last: dict[Kind, float] = field(default_factory=dict)
    suppressed: int = 0

    def allow(self, kind: Kind, now: float) -> bool:
        self._sent = [t for t in self._sent if now - t < self.window]
        last = self._last.get(kind)
        if len(self._sent) >= self.burst or (last is not None and now - last < self.same_kind):
            self.suppressed += 1
            return False
        self._sent.append(now)
        self._last[kind] = now
        return True


def notify_send_argv(user: str, notice: Notice) -> list[str]:
    """The command that shows `notice` on `user`'s desktop."""
    return [
        "runuser", "-u", user, "--",
        "notify-send", "--app-name", APP_NAME, "--urgency", notice.urgency,
        notice.title, notice.body,
    ]  # fmt: skip


def user_environment(user: str) -> dict[str, str]:
    """What notify-send needs to find the user's session bus (XDG_RUNTIME_DIR, the bus)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    with contextlib.suppress(KeyError):
        uid = pwd.getpwnam(user).pw_uid
        env["XDG_RUNTIME_DIR"] = f"/run/user/{uid}"
        env["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path=/run/user/{uid}/bus"
    return env


class Notifier:
    """Observes the daemon's phases (`GatewayDaemon(on_phase=notifier.phase_changed)`)."""

    def __init__(
        self,
        default_user: Callable[[], str | None],
        *,
        limit: RateLimit | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self._default_user = default_user
        self._limit = limit or RateLimit()
        self._clock = clock or time.monotonic
        self._tasks: set[asyncio.Task[None]] = set()
        self._failed_once = False  # the first failure is a warning, later ones debug

    def phase_changed(self, old: Phase | None, new: Phase) -> None:
        notice = notice_for(old, new)
        if notice is None:
            return
        level = logging.INFO if notice.kind is Kind.CONNECTED else logging.WARNING
        log.log(level, "%s: %s", notice.title, notice.body)
        user = self._default_user()
        if user is None:
            return
        if not self._limit.allow(notice.kind, self._clock()):
            log.debug("desktop notice %s not shown (rate limit)", notice.kind.value)
            return
        try:
            task = asyncio.get_running_loop().create_task(self._send(user, notice))
        except RuntimeError:  # no loop (stopping): the journal line is enough
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, user: str, notice: Notice) -> None:
        argv = notify_send_argv(user, notice)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=user_environment(user),
            )
        except OSError as e:
            self._failed(f"cannot run runuser/notify-send: {e}")
            return
        try:
            _, err = await asyncio.wait_for(proc.communicate(), SEND_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self._failed("notify-send took too long: killed")
            return
        if proc.returncode:
            self._failed(f"exit {proc.returncode}: {err.decode(errors='replace').strip()[:300]}")

    def _failed(self, what: str) -> None:
        level = logging.DEBUG if self._failed_once else logging.WARNING
        self._failed_once = True
        log.log(level, "desktop notification not shown (%s); the journal has it", what)

    async def drain(self) -> None:
        """Wait for the notices under way (at stop)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=SEND_TIMEOUT + 1)
