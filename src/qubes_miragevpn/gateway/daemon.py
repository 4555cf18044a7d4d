"""The gateway daemon's life cycle: sessions on the shared loop, the firewall always in step.

    start       read the facts → Blocked applied and verified → tracked connections flushed
                (a flow offloaded before our table existed would skip it) → sd_notify
                READY=1 → the tick runs (WATCHDOG=1, the server's host route)
    session     load the profile (none usable: stay blocked and say why) → `SessionLoop` with
                this object as its hooks and the daemon's socket mark on every transport socket:
                  before_connect(E)   host route to E via the uplink, then Connecting(E)
                  tunnel_up(settings) tun opened once, addresses + routes, then Connected
                  restarting(...)     Blocked (the engine reconnects by itself)
                  answer_challenge    Asking, Blocked: waits up to `answer_timeout` for
                                      `answer(code)` (the control socket's `answer`), else
                                      ends the session with CodeNotGiven (held)
    after       `lifecycle.after_end`: HALT / AUTH_FAILED / an unusable profile / no one-time
                code hold (blocked,
                until the profile selection changes or the daemon restarts); anything else
                starts a new session after a capped back-off, forever
    changes     profile selection (QubesDB watch): AppVMs blocked at once, session closed,
                a new one started; facts (/connected-ips...): the current policy re-applied
    stop        SIGTERM/SIGINT: AppVMs blocked, session closed (explicit-exit-notify), Blocked;
                the table stays (only `qubes-miragevpn unblock` removes it)

Every policy change goes through `_enter(phase)`, which applies `policy_for(phase)`
synchronously (one libnftables transaction, read back and verified by `gateway.nft`); when that
fails the firewall module has already fallen back to Blocked, and the hook that asked raises,
so the session ends and is retried. The decisions are in `gateway.lifecycle` (pure); this module
does the IO, through small protocols so tests can drive it with doubles.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from miragevpn.config.model import Config
from miragevpn.events import ChallengeRequested, TunnelSettings

from ..describe import describe_settings
from ..sdnotify import sd_notify
from ..session import ClientFactory, Ending, Endpoint, SessionLoop, SessionOutcome
from ..tun import TunDevice
from . import control, lifecycle, resolve
from .lifecycle import Asking, CodeNotGiven, Dialing, Held, Phase, Resolving, Up, Waiting
from .policy import Facts, Policy

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SOCKET_MARK = 0x6D76  # "mv": SO_MARK of the daemon's own sockets; the firewall lets only these out
TUN_NAME = "miragevpn0"  # the gateway's tun device (kept for the daemon's whole life)
TICK = 1.0  # seconds between maintenance ticks (host route check), at most
ENGINE_RETRY_CAP = lifecycle.BACKOFF_CAP  # the engine's own connect-retry back-off, capped too


class ExitCode(enum.IntEnum):
    """What `qubes-miragevpn` returns (its --help lists these)."""

    OK = 0  # stopped on request; the blocking policy stays in force
    CONFIG = 1  # settings, --qubesdb-file or the facts cannot be used
    USAGE = 2  # bad command line (argparse)
    FIREWALL = 3  # the blocking policy could not be installed or verified
    SETUP_FAILED = 4  # local set-up failed: netlink, tun device (not root?)


# --------------------------------------------------------------------------- what it needs


@dataclass(frozen=True, slots=True, kw_only=True)
class Surroundings:
    """The facts the daemon acts on: the firewall's, and the uplink's next hops for the host
    route to the server (/qubes-gateway, /qubes-gateway6)."""

    firewall: Facts
    uplink_gateway: ipaddress.IPv4Address | None
    uplink_gateway6: ipaddress.IPv6Address | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """A usable profile: its name (for messages), the parsed config, how to build the engine,
    and the DNS servers settings.yaml sets for the AppVMs (empty: the pushed ones)."""

    name: str
    config: Config
    client_factory: ClientFactory
    dns: tuple[IPAddress, ...] = ()


class ProfileError(Exception):
    """No usable profile: none, several without a selection, unreadable, refused. The message
    says what to do; the daemon stays blocked until the selection changes."""


class Firewall(Protocol):
    def apply(self, policy: Policy, facts: Facts) -> None:
        """Apply and verify `policy`, or raise (having fallen back to Blocked)."""
        ...


class Routing(Protocol):
    """The tun device and routes (`gateway.routing.GatewayRouting`)."""

    def open_tun(self, name: str) -> TunDevice: ...
    async def configure_tunnel(self, ifname: str, settings: TunnelSettings) -> None: ...
    async def ensure_server_route(
        self, server: IPAddress, gateway: IPAddress, uplink: str
    ) -> bool: ...


class Session(Protocol):
    """What the daemon uses of a `SessionLoop`."""

    async def run(self) -> SessionOutcome: ...
    def close(self, reason: str = "stop request") -> None: ...


SessionFactory = Callable[[Profile, "GatewayDaemon"], Session]
Resolver = Callable[[str, Sequence[IPAddress]], Awaitable[list[IPAddress]]]


async def marked_resolver(host: str, servers: Sequence[IPAddress]) -> list[IPAddress]:
    """`resolve.resolve` from the daemon's marked sockets (what the Resolving policy allows)."""
    return await resolve.resolve(host, servers, mark=SOCKET_MARK)


Notify = Callable[[str], object]


def gateway_config(config: Config) -> Config:
    """The profile's config as the gateway runs it: retries forever, back-off capped (a server
    returning after a long outage is found within the cap, not after OpenVPN's 300 s)."""
    return replace(
        config,
        connect_retry_max=None,
        connect_retry_max_delay=min(config.connect_retry_max_delay, ENGINE_RETRY_CAP),
    )


def default_session_factory(profile: Profile, daemon: GatewayDaemon) -> Session:
    return SessionLoop(
        gateway_config(profile.config),
        daemon,
        client_factory=profile.client_factory,
        socket_mark=SOCKET_MARK,
    )


def watchdog_interval(environ: dict[str, str] | os._Environ[str]) -> float | None:
    """Half of systemd's WatchdogSec (WATCHDOG_USEC), if the watchdog is on for this process."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


# --------------------------------------------------------------------------- the daemon


class GatewayDaemon:
    """Runs sessions forever, keeping the firewall in step; `run()` returns an ExitCode."""

    def __init__(
        self,
        *,
        read_surroundings: Callable[[], Surroundings],
        load_profile: Callable[[], Profile],
        firewall: Firewall,
        routing: Routing,
        notify: Notify = sd_notify,
        session_factory: SessionFactory = default_session_factory,
        resolver: Resolver = marked_resolver,
        flush: Callable[[], int] | None = None,
        tun_name: str = TUN_NAME,
        watchdog: float | None = None,
        on_phase: Callable[[Phase | None, Phase], object] | None = None,
        blocked_report: Callable[[], tuple[Mapping[str, Any], ...]] | None = None,
        report_mode: str = "off",
        answer_timeout: float = lifecycle.ANSWER_TIMEOUT,
    ) -> None:
        self._answer_timeout = answer_timeout
        self._code_wanted: asyncio.Future[str] | None = None  # while a code is asked
        self._on_phase = on_phase  # observer of every phase change (notifications)
        self._blocked_report = blocked_report  # the blocked-traffic entries, for status
        self._report_mode = report_mode
        self._resolver = resolver
        self._flush = flush
        self._read_surroundings = read_surroundings
        self._load_profile = load_profile
        self._firewall = firewall
        self._routing = routing
        self._notify = notify
        self._session_factory = session_factory
        self._tun_name = tun_name
        self._watchdog = watchdog

        self._surroundings: Surroundings | None = None
        self._phase: Phase = Waiting(reason="starting")
        self._profile: Profile | None = None
        self._session: Session | None = None
        self._route_failing = False
        self._closed_by_us = False
        self._tun: TunDevice | None = None
        self._wake: asyncio.Event | None = None
        self._stopping: str | None = None
        self._failures = 0
        self._reached_tunnel = False
        self.phases: list[Phase] = []  # every phase entered, in order (for tests and status)
        # for the control socket's status (wall-clock times)
        self._since = time.time()
        self._addresses: tuple[str, ...] = ()
        self._last_handshake: float | None = None
        self._last_error: tuple[str, float] | None = None
        self._renegotiations: tuple[int, float | None] = (0, None)

    @property
    def phase(self) -> Phase:
        return self._phase

    # ------------------------------------------------------------------ entry point

    async def run(self) -> ExitCode:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            self._surroundings = self._read_surroundings()
        except Exception as e:
            log.error("cannot read the network facts: %s", e)
            return ExitCode.CONFIG
        if not self._enter(Waiting(reason="starting")):
            log.error("the blocking policy could not be installed: not starting")
            return ExitCode.FIREWALL
        if self._flush is not None:
            try:
                flushed = await asyncio.to_thread(self._flush)
            except Exception as e:  # not fatal: after a normal boot there is nothing to end
                log.warning("cannot flush connection tracking: %s", e)
            else:
                log.info("ended %d tracked connections that predate the firewall", flushed)
        with contextlib.ExitStack() as cleanup:
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(signum, self.stop, signal.Signals(signum).name)
                    cleanup.callback(loop.remove_signal_handler, signum)
            cleanup.callback(self._close_tun)
            self._notify(f"READY=1\nSTATUS={lifecycle.status_line(self._phase)}")
            log.info("blocking policy verified: ready (AppVMs are blocked until the tunnel is up)")
            ticker = asyncio.ensure_future(self._tick())
            try:
                await self._sessions()
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                self._enter(Waiting(reason=f"stopped ({self._stopping})"))
        self._notify("STOPPING=1\nSTATUS=stopped: blocked")
        log.info("stopped (%s); the blocking policy stays in force", self._stopping)
        return ExitCode.OK

    def stop(self, reason: str = "stop request") -> None:
        """Block the AppVMs, close the session in order, end `run()` (a second call: at once)."""
        if self._stopping is not None and self._session is not None:
            self._session.close(reason)  # the loop's second close ends at once
            return
        self._stopping = reason
        log.info("%s: stopping", reason)
        self._close_session(reason)
        if self._wake is not None:
            self._wake.set()

    def profile_changed(self) -> None:
        """The profile selection changed (QubesDB watch): reconnect with the new one, AppVMs
        blocked during the switch; also leaves a Held phase."""
        log.info("profile selection changed: reconnecting with the firewall closed")
        self._failures = 0
        self._close_session("profile changed")
        if self._wake is not None:
            self._wake.set()

    def facts_changed(self) -> None:
        """QubesDB facts changed (/connected-ips...): re-read, re-apply the current policy."""
        try:
            surroundings = self._read_surroundings()
        except Exception as e:
            log.warning("cannot re-read the network facts (keeping the old ones): %s", e)
            return
        if surroundings == self._surroundings:
            return
        self._surroundings = surroundings
        log.info("network facts changed: re-applying the %s policy", type(self._phase).__name__)
        self._enter(self._phase)

    def reconnect(self) -> None:
        """The `reconnect` command: a new session now (AppVMs blocked meanwhile); also leaves
        a Held phase, so the user can retry after fixing credentials."""
        log.info("reconnect requested: reconnecting with the firewall closed")
        self._failures = 0
        self._close_session("reconnect requested")
        if self._wake is not None:
            self._wake.set()

    def answer(self, code: str) -> str | None:
        """The `answer` command: the one-time code for the question the session waits on;
        the refusal in words when nothing is asked. The code is never logged."""
        wanted = self._code_wanted
        if wanted is None or wanted.done():
            return "no one-time code is asked for now (see `qubes-miragevpn status`)"
        wanted.set_result(code)
        log.info("one-time code received through the control socket")
        return None

    def view(self) -> control.View:
        """The daemon's state for the control socket's `status`."""
        now = time.time()
        stats = getattr(self._session, "engine_stats", None)
        count, at = self._renegotiations
        renegotiations = getattr(stats, "renegotiations", None)
        if isinstance(renegotiations, int) and renegotiations > count:
            self._renegotiations = (renegotiations, now)  # seen at the latest on this query
        count, at = self._renegotiations
        up = isinstance(self._phase, Up)
        return control.View(
            phase=self._phase,
            since=self._since,
            profile=self._profile.name if self._profile is not None else None,
            addresses=self._addresses,
            traffic=control.read_tun_traffic(self._tun.name) if up and self._tun else None,
            last_handshake=self._last_handshake,
            last_renegotiation=at,
            renegotiations=count,
            last_error=self._last_error[0] if self._last_error else None,
            last_error_at=self._last_error[1] if self._last_error else None,
            blocked=self._blocked_entries(),
            report_mode=self._report_mode,
        )

    def _blocked_entries(self) -> tuple[Mapping[str, Any], ...]:
        if self._blocked_report is None:
            return ()
        try:
            return self._blocked_report()
        except Exception as e:  # the report never stands in the way of the status
            log.warning("blocked-traffic report unavailable: %s", e)
            return ()

    # ------------------------------------------------------------------ sessions

    async def _sessions(self) -> None:
        assert self._wake is not None
        while self._stopping is None:
            self._wake.clear()
            try:
                profile = self._load_profile()
            except ProfileError as e:
                self._enter(Held(reason=str(e)))
                await self._wake.wait()
                continue
            self._profile = profile
            outcome = await self._one_session(profile)
            if self._stopping is not None:
                break
            kind = lifecycle.classify_end(
                ending=outcome.ending.value,
                reason=outcome.reason,
                error=outcome.error,
                closed_by_us=self._closed_by_us,
            )
            self._failures = (
                0
                if self._reached_tunnel or kind is lifecycle.EndKind.STOPPED
                else (self._failures + 1)
            )
            phase = lifecycle.after_end(kind, outcome.reason, self._failures)
            self._enter(phase)
            if isinstance(phase, Held):
                log.error(
                    "%s: staying blocked until the profile changes or a restart", phase.reason
                )
                await self._wake.wait()
            elif isinstance(phase, Waiting) and phase.retry_in > 0 and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), phase.retry_in)

    async def _one_session(self, profile: Profile) -> SessionOutcome:
        log.info("starting a session with profile %s", profile.name)
        self._closed_by_us = False
        self._reached_tunnel = False
        try:
            profile = await self._resolved(profile)
        except (resolve.ResolveError, RuntimeError) as e:
            log.warning("%s", e)
            return SessionOutcome(ending=Ending.FAILED, reason=str(e), error=e)
        if self._stopping is not None or (self._wake is not None and self._wake.is_set()):
            # stopped, or the profile changed, while resolving: start over (or stop)
            self._closed_by_us = True
            return SessionOutcome(ending=Ending.CLOSED, reason="stopped while resolving")
        session = self._session_factory(profile, self)
        self._session = session
        try:
            return await session.run()
        except Exception as e:  # the engine refused the config, or a bug: retried, said
            log.error("session failed: %r", e)
            return SessionOutcome(ending=Ending.FAILED, reason=f"session failed: {e}", error=e)
        finally:
            self._session = None

    async def _resolved(self, profile: Profile) -> Profile:
        """`profile` with its hostname remotes resolved through the uplink (marked sockets,
        policy Connecting with uplink DNS only); unchanged when every remote is an address."""
        hosts = resolve.hostnames(profile.config)
        if not hosts:
            return profile
        if not self._enter(Resolving(hosts=tuple(hosts))):
            raise RuntimeError("the firewall policy for resolving the server could not be applied")
        assert self._surroundings is not None
        servers = self._surroundings.firewall.uplink_dns
        found: dict[str, list[IPAddress]] = {}
        for host in hosts:
            try:
                found[host] = await self._resolver(host, servers)
            except resolve.ResolveError as e:
                log.warning("%s", e)
                continue
            log.info("%s is %s", host, ", ".join(map(str, found[host])))
        config = resolve.with_addresses(profile.config, found)
        if not config.remotes:
            raise resolve.ResolveError(f"cannot resolve {', '.join(hosts)} through the uplink")
        return replace(profile, config=config)  # Resolving stays until before_connect

    def _close_session(self, reason: str) -> None:
        """AppVMs off at once; the daemon's socket may still say goodbye to the server."""
        session = self._session
        if session is None:
            return
        self._closed_by_us = True
        if isinstance(self._phase, Up):
            self._enter(Dialing(endpoint=self._phase.tunnel.endpoint))
        session.close(reason)

    # ------------------------------------------------------------------ hooks (SessionHooks)

    async def before_connect(self, endpoint: Endpoint) -> None:
        policy_endpoint = lifecycle.endpoint_of(endpoint.address, endpoint.port, endpoint.transport)
        await self._server_route(endpoint.address)
        if not self._enter(Dialing(endpoint=policy_endpoint)):
            raise RuntimeError("the Connecting firewall policy could not be applied")

    async def tunnel_up(self, settings: TunnelSettings) -> TunDevice:
        dialing = self._phase
        if not isinstance(dialing, (Dialing, Up)):
            raise RuntimeError(f"tunnel up while {type(dialing).__name__}: refusing")
        endpoint = dialing.endpoint if isinstance(dialing, Dialing) else dialing.tunnel.endpoint
        try:
            if self._tun is None:
                self._tun = self._routing.open_tun(self._tun_name)
            await self._routing.configure_tunnel(self._tun.name, settings)
        except Exception:
            self._enter(Waiting(reason="cannot configure the tunnel device"))
            raise
        await self._server_route(settings.remote_address)
        profile = self._profile
        tunnel = lifecycle.tunnel_of(
            settings,
            device=self._tun.name,
            endpoint=endpoint,
            configured_dns=profile.dns if profile is not None else (),
        )
        summary = describe_settings(self._tun.name, settings)
        warning = lifecycle.dns_warning(tunnel)
        if warning:
            log.warning("%s", warning)
            summary += f"; {warning}"
        if not self._enter(Up(tunnel=tunnel, summary=summary)):
            raise RuntimeError("the Connected firewall policy could not be applied")
        self._reached_tunnel = True
        self._failures = 0
        self._addresses = tuple(str(a) for a in (settings.ipv4, settings.ipv6) if a is not None)
        self._last_handshake = time.time()
        self._renegotiations = (0, None)
        log.info("tunnel up: %s", summary)
        return self._tun

    def restarting(self, reason: str, retry_in: float) -> None:
        self._enter(Waiting(reason=reason, retry_in=retry_in))

    async def answer_challenge(self, challenge: ChallengeRequested) -> str:
        timeout = self._answer_timeout
        wanted: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._code_wanted = wanted
        try:
            self._enter(Asking(text=challenge.text, dynamic=challenge.dynamic, timeout=timeout))
            try:
                return await asyncio.wait_for(wanted, timeout)
            except TimeoutError:
                raise CodeNotGiven(
                    f"no one-time code was given within {timeout:.0f}s "
                    "(`qubes-miragevpn reconnect` asks again)"
                ) from None
        finally:
            self._code_wanted = None

    def progress(self, message: str) -> None:
        if not isinstance(self._phase, Up):
            self._notify(f"STATUS={lifecycle.status_line(self._phase)}: {message}")

    def ended(self, outcome: SessionOutcome) -> None:
        log.info("session ended (%s): %s", outcome.ending.value, outcome.reason)

    # ------------------------------------------------------------------ plumbing

    def _enter(self, phase: Phase) -> bool:
        """Make `phase` current and apply its policy; False (and Blocked) if that failed."""
        surroundings = self._surroundings
        assert surroundings is not None
        policy = lifecycle.policy_for(phase)
        log.info("firewall: applying %s (%s)", type(policy).__name__, lifecycle.status_line(phase))
        ok = True
        try:
            self._firewall.apply(policy, surroundings.firewall)
        except Exception as e:
            log.error("firewall: cannot apply %s: %s", type(policy).__name__, e)
            ok = False
            phase = Waiting(reason=f"firewall policy failed: {e}")
        if type(phase) is not type(self._phase) or not self.phases:
            self._since = time.time()
        if isinstance(phase, Held) or (
            isinstance(phase, Waiting) and (phase.retry_in > 0 or not ok)
        ):
            self._last_error = (phase.reason, time.time())
        previous = self._phase if self.phases else None
        self._phase = phase
        self.phases.append(phase)
        if self._on_phase is not None and phase != previous:
            try:
                self._on_phase(previous, phase)
            except Exception as e:  # an observer never stands in the firewall's way
                log.error("phase observer failed: %r", e)
        self._notify(f"STATUS={lifecycle.status_line(phase)}")
        return ok

    async def _server_route(self, server: IPAddress) -> None:
        """The host route to the server through the uplink; a failure is logged (the uplink is
        down: the tick puts the route back when it returns)."""
        surroundings = self._surroundings
        assert surroundings is not None
        gateway: IPAddress | None = (
            surroundings.uplink_gateway if server.version == 4 else surroundings.uplink_gateway6
        )
        if gateway is None:
            log.warning(
                "no uplink gateway for %s in the facts: no host route to the server", server
            )
            return
        try:
            await self._routing.ensure_server_route(server, gateway, surroundings.firewall.uplink)
        except Exception as e:
            level = logging.DEBUG if self._route_failing else logging.WARNING
            log.log(level, "cannot add the host route to %s (uplink down?): %s", server, e)
            self._route_failing = True
        else:
            if self._route_failing:
                log.info("host route to %s is back", server)
            self._route_failing = False

    async def _tick(self) -> None:
        """WATCHDOG=1 from the loop (a hung loop is restarted by systemd, the firewall stays
        closed), and the host route to the server put back after an uplink flap."""
        interval = min(TICK, self._watchdog) if self._watchdog else TICK
        while True:
            if self._watchdog:
                self._notify("WATCHDOG=1")
            phase = self._phase
            if isinstance(phase, (Dialing, Up)):
                endpoint = phase.endpoint if isinstance(phase, Dialing) else phase.tunnel.endpoint
                await self._server_route(endpoint.address)
            await asyncio.sleep(interval)

    def _close_tun(self) -> None:
        if self._tun is not None:
            self._tun.close()
            self._tun = None
