"""The unix client: one application of `SessionLoop` (the Qubes gateway is the other).

What it decides (`SessionHooks`), and what it owns around the loop:

    tunnel up   opens the tun device on the first `tunnel_up` and keeps it through reconnects
                (packets for the tunnel are dropped while it is down instead of leaking
                elsewhere), applies the settings through netlink (`allow_routes` is false with
                `route-nopull`); a change the kernel refuses is logged, skipped and counted;
                then "tunnel up: ..." in the log and READY=1 to systemd
    connect     nothing to prepare (no firewall of its own)
    code        a one-time code is asked on the terminal (asktty.py; echoed only if the
                challenge says so); without a terminal the session ends (exit 3)
    signals     SIGTERM/SIGINT → the loop's orderly close (explicit-exit-notify, bounded), a
                second signal stops at once; SIGUSR1 (and OpenVPN's SIGUSR2) → the state and
                statistics lines (`describe`), which are also logged at exit
    exit        the outcome as an `ExitCode`; the network changes are undone and the tun device
                closed whatever the reason
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from miragevpn.config.model import Config
from miragevpn.events import ChallengeRequested, TunnelSettings

from .asktty import ask_on_terminal
from .describe import describe_settings, describe_state, describe_stats, describe_udp_stats
from .netlink import Netlink, NetworkConfigurator, TunnelSetupError
from .sdnotify import sd_notify
from .session import (
    CLOSE_TIMEOUT,
    ClientFactory,
    Ending,
    Endpoint,
    SessionLoop,
    SessionOutcome,
)
from .tun import TunDevice

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STATS_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # log the statistics (SIGUSR2: OpenVPN's)
Notify = Callable[[str], object]
AskCode = Callable[[ChallengeRequested], Awaitable[str]]
OpenNetwork = Callable[[], Awaitable[NetworkConfigurator]]


class ExitCode(enum.IntEnum):
    """What `miragevpn-client` returns."""

    OK = 0  # stopped on request (SIGTERM/SIGINT), session closed in order
    CONFIG = 1  # the configuration cannot be used
    USAGE = 2  # bad command line (argparse)
    SESSION_FAILED = 3  # the session ended on an error: auth failed, server HALT, retries over
    SETUP_FAILED = 4  # local set-up failed: tun device, routes (not root? no /dev/net/tun?)


EXIT_CODES = {
    Ending.CLOSED: ExitCode.OK,
    Ending.FAILED: ExitCode.SESSION_FAILED,
    Ending.SETUP_FAILED: ExitCode.SETUP_FAILED,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    exit_code: ExitCode
    reason: str


async def open_netlink() -> NetworkConfigurator:
    return await Netlink.open()


class UnixClient:
    """Runs one session with the kernel's tun device and routes; `run()` returns the outcome."""

    def __init__(
        self,
        config: Config,
        *,
        client_factory: ClientFactory,
        tun_name: str,
        open_network: OpenNetwork = open_netlink,
        notify: Notify = sd_notify,
        clock: Callable[[], float] = time.monotonic,
        close_timeout: float = CLOSE_TIMEOUT,
        ask_code: AskCode = ask_on_terminal,
    ) -> None:
        self._config = config
        self._ask_code = ask_code
        self._tun_name = tun_name
        self._open_network = open_network
        self._notify = notify
        self._clock = clock
        self._network: NetworkConfigurator | None = None
        self._tun: TunDevice | None = None
        self._stopping = False
        self.skipped_changes = 0  # system changes refused by the kernel, over all tunnel ups
        self.session = SessionLoop(
            config, self, client_factory=client_factory, clock=clock, close_timeout=close_timeout
        )

    # ------------------------------------------------------------------ the application

    async def run(self) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            self._network = await self._open_network()
        except (OSError, RuntimeError, ValueError) as e:
            log.error("cannot open a netlink socket: %s", e)
            return Outcome(ExitCode.SETUP_FAILED, f"cannot open a netlink socket: {e}")
        with contextlib.ExitStack() as handlers:
            for signum in STOP_SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(signum, self.stop, signum)
                    handlers.callback(loop.remove_signal_handler, signum)
            for signum in STATS_SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(signum, self.log_stats)
                    handlers.callback(loop.remove_signal_handler, signum)
            self._notify("STATUS=starting")
            try:
                outcome = await self.session.run()
            finally:
                self.log_stats()  # the same lines at exit, whatever the reason
                await self._teardown()
        return Outcome(EXIT_CODES[outcome.ending], outcome.reason)

    def stop(self, signum: int | None = None) -> None:
        """Close the session in order; a second call stops at once."""
        name = signal.Signals(signum).name if signum is not None else "stop request"
        if not self._stopping:
            self._stopping = True
            self._notify("STOPPING=1")
        self.session.close(name)

    def log_stats(self) -> None:
        """Where the session is, the IPv6 packets block-ipv6 answered (if any), the engine's
        counters, the UDP socket's, the system changes refused so far: one line each."""
        ifname = self._tun.name if self._tun is not None else None
        log.info("session: %s", describe_state(self.session.state, self._clock(), ifname))
        if self.session.ipv6_blocked:  # before "statistics:", which readers wait for
            log.info("block-ipv6: %d IPv6 packets kept from the tunnel", self.session.ipv6_blocked)
        log.info("%s", describe_stats(self.session.engine_stats))
        udp = self.session.udp_stats
        if udp is not None:
            log.info("%s", describe_udp_stats(udp))
        if self.skipped_changes:
            log.info("tunnel set-up: %d changes refused by the system", self.skipped_changes)

    async def _teardown(self) -> None:
        try:
            if self._network is not None:
                await self._network.close()  # reverts addresses, routes, MTU
        finally:
            if self._tun is not None:
                self._tun.close()
                self._tun = None

    # ------------------------------------------------------------------ SessionHooks

    async def before_connect(self, endpoint: Endpoint) -> None:
        return None  # no firewall of its own: nothing to prepare

    async def tunnel_up(self, settings: TunnelSettings) -> TunDevice:
        network = self._network
        if network is None:
            raise TunnelSetupError("the network is not open")
        if self._tun is None:
            self._tun = network.open_tun(self._tun_name)
        report = await network.apply(
            self._tun.name, settings, allow_routes=not self._config.route_nopull
        )
        self.skipped_changes += len(report.skipped)
        summary = describe_settings(self._tun.name, settings)
        if report.skipped:
            summary += f"; {len(report.skipped)} changes refused by the system (logged above)"
        log.info("tunnel up: %s", summary)
        self._notify(f"READY=1\nSTATUS=connected: {summary}")
        return self._tun

    def restarting(self, reason: str, retry_in: float) -> None:
        self._notify(f"STATUS=reconnecting: {reason}")

    async def answer_challenge(self, challenge: ChallengeRequested) -> str:
        self._notify(f"STATUS=waiting for a one-time code: {challenge.text}")
        return await self._ask_code(challenge)

    def progress(self, message: str) -> None:
        self._notify(f"STATUS={message}")

    def ended(self, outcome: SessionOutcome) -> None:
        log.debug("session over: %s (%s)", outcome.reason, outcome.ending.value)
