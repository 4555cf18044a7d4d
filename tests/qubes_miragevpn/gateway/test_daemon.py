"""The daemon's life cycle with doubles: a scripted session, a recording firewall and routing.

No namespaces: the session is a script that calls the daemon's hooks the way `SessionLoop`
does (before_connect, tunnel_up, restarting, then run() returns an outcome), and the firewall
records every policy. `test_daemon_topology.py` runs the real thing."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from miragevpn.config.model import Config, Remote, Transport
from miragevpn.errors import AuthFailed, RemoteProtocolError
from miragevpn.events import ChallengeRequested, TunnelSettings
from qubes_miragevpn.gateway import daemon as daemon_module
from qubes_miragevpn.gateway import lifecycle
from qubes_miragevpn.gateway.daemon import (
    ExitCode,
    GatewayDaemon,
    Profile,
    ProfileError,
    Surroundings,
)
from qubes_miragevpn.gateway.lifecycle import Asking, Dialing, Held, Up, Waiting
from qubes_miragevpn.gateway.policy import Blocked, Connected, Connecting, Facts, Policy
from qubes_miragevpn.hooks import CannotAsk
from qubes_miragevpn.session import Ending, Endpoint, SessionOutcome

SERVER = ipaddress.ip_address("198.51.100.1")
OTHER = ipaddress.ip_address("198.51.100.2")
GATEWAY = ipaddress.IPv4Address("10.137.0.5")
FACTS = Facts(socket_mark=0x6D76)
SURROUNDINGS = Surroundings(firewall=FACTS, uplink_gateway=GATEWAY)


def settings(server: ipaddress.IPv4Address | ipaddress.IPv6Address = SERVER) -> TunnelSettings:
    return TunnelSettings(
        ipv4=ipaddress.IPv4Interface("10.8.0.2/24"),
        ipv4_peer=None,
        ipv6=None,
        mtu=1500,
        routes=(),
        redirect_gateway_ipv4=True,
        redirect_gateway_ipv6=False,
        remote_address=server,
        dhcp_options=(),
        cipher="AES-256-GCM",
        key_derivation="tls-ekm",
    )


# ---------------------------------------------------------------- doubles


@dataclass
class RecordingFirewall:
    applied: list[tuple[Policy, Facts]] = field(default_factory=list)
    fail: Callable[[Policy], bool] = lambda policy: False

    def apply(self, policy: Policy, facts: Facts) -> None:
        if self.fail(policy):
            self.applied.append((Blocked(), facts))  # nft.apply_policy's own fallback
            raise RuntimeError(f"cannot apply {type(policy).__name__}")
        self.applied.append((policy, facts))

    @property
    def policies(self) -> list[str]:
        return [type(p).__name__ for p, _ in self.applied]


class FakeTun:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def fileno(self) -> int:
        return -1

    def read(self) -> bytes | None:
        return None

    def write(self, packet: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@dataclass
class RecordingRouting:
    calls: list[tuple[str, Any]] = field(default_factory=list)
    uplink_down: bool = False
    tuns: list[FakeTun] = field(default_factory=list)

    def open_tun(self, name: str) -> FakeTun:
        self.tuns.append(FakeTun(name))
        self.calls.append(("open_tun", name))
        return self.tuns[-1]

    async def configure_tunnel(self, ifname: str, settings: TunnelSettings) -> None:
        self.calls.append(("configure", ifname))

    async def ensure_server_route(self, server: Any, gateway: Any, uplink: str) -> bool:
        if self.uplink_down:
            raise OSError("Network is down")
        self.calls.append(("server_route", (server, gateway, uplink)))
        return True


Step = tuple[str, Any]


class ScriptedSession:
    """Calls the hooks like SessionLoop; ("hold",) waits until close() is called."""

    def __init__(self, steps: list[Step], hooks: GatewayDaemon) -> None:
        self.steps = steps
        self.hooks = hooks
        self.closed = asyncio.Event()
        self.close_reasons: list[str] = []
        self.codes: list[str] = []

    async def run(self) -> SessionOutcome:
        for kind, arg in self.steps:
            if self.closed.is_set():
                break
            if kind == "connect":
                try:
                    await self.hooks.before_connect(
                        Endpoint(address=arg, port=1194, transport=Transport.UDP)
                    )
                except Exception as e:
                    return SessionOutcome(ending=Ending.SETUP_FAILED, reason=str(e), error=e)
            elif kind == "up":
                try:
                    await self.hooks.tunnel_up(arg)
                except Exception as e:
                    return SessionOutcome(ending=Ending.SETUP_FAILED, reason=str(e), error=e)
            elif kind == "restart":
                self.hooks.restarting(arg, 1.0)
            elif kind == "end":
                return arg  # type: ignore[no-any-return]
            elif kind == "hold":
                await self.closed.wait()
            elif kind == "ask":  # as SessionLoop: CannotAsk ends the session, FAILED
                question = ChallengeRequested(text=arg, echo=False, dynamic=True)
                try:
                    self.codes.append(await self.hooks.answer_challenge(question))
                except CannotAsk as e:
                    return SessionOutcome(ending=Ending.FAILED, reason=str(e), error=e)
            await asyncio.sleep(0)
        reason = self.close_reasons[0] if self.close_reasons else "script over"
        return SessionOutcome(ending=Ending.CLOSED, reason=reason)

    def close(self, reason: str = "stop request") -> None:
        self.close_reasons.append(reason)
        self.closed.set()


@dataclass
class Harness:
    scripts: list[list[Step]]
    profile: Callable[[], Profile] | None = None
    firewall: RecordingFirewall = field(default_factory=RecordingFirewall)
    routing: RecordingRouting = field(default_factory=RecordingRouting)
    notes: list[str] = field(default_factory=list)
    sessions: list[ScriptedSession] = field(default_factory=list)
    surroundings: Surroundings = SURROUNDINGS
    watchdog: float | None = None
    answer_timeout: float = lifecycle.ANSWER_TIMEOUT
    daemon: GatewayDaemon = field(init=False)

    def __post_init__(self) -> None:
        def session_factory(profile: Profile, daemon: GatewayDaemon) -> ScriptedSession:
            steps = self.scripts.pop(0) if self.scripts else [("hold", None)]
            session = ScriptedSession(steps, daemon)
            self.sessions.append(session)
            return session

        self.daemon = GatewayDaemon(
            read_surroundings=lambda: self.surroundings,
            load_profile=self.profile or load_profile,
            firewall=self.firewall,
            routing=self.routing,
            notify=self.notes.append,
            session_factory=session_factory,
            watchdog=self.watchdog,
            answer_timeout=self.answer_timeout,
        )

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline, "condition not reached"
            await asyncio.sleep(0.005)


def load_profile() -> Profile:
    config = Config(remotes=(Remote(host=str(SERVER)),))
    return Profile(name="test.ovpn", config=config, client_factory=lambda c, now: None)  # type: ignore[arg-type,return-value]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def end(reason: str, error: BaseException | None = None) -> Step:
    ending = Ending.FAILED if error is not None else Ending.CLOSED
    return ("end", SessionOutcome(ending=ending, reason=reason, error=error))


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "BACKOFF_FIRST", 0.01)
    monkeypatch.setattr(daemon_module, "TICK", 0.02)


# ---------------------------------------------------------------- start


def test_blocked_is_verified_before_ready_and_policies_follow_the_hooks() -> None:
    h = Harness([[("connect", SERVER), ("up", settings()), ("restart", "ping timeout"),
                  ("connect", SERVER), ("up", settings()), ("hold", None)]])  # fmt: skip

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: len(h.firewall.applied) >= 5)
        h.daemon.stop()
        assert await task is ExitCode.OK

    run(scenario())
    assert h.firewall.policies == [
        "Blocked",  # start
        "Connecting",  # before the first connect
        "Connected",  # tunnel up
        "Blocked",  # restarting
        "Connecting",
        "Connected",
        "Connecting",  # stop: AppVMs off at once, the daemon may say goodbye
        "Blocked",  # stopped: the table stays, blocked
    ]
    ready = [i for i, note in enumerate(h.notes) if "READY=1" in note]
    assert len(ready) == 1
    # READY comes after the first (Blocked) policy and before any connect: not tunnel-up
    assert h.notes[ready[0]].endswith("blocked: starting")
    connecting = h.firewall.applied[1][0]
    assert isinstance(connecting, Connecting)
    assert connecting.endpoints[0].address == SERVER
    connected = h.firewall.applied[2][0]
    assert isinstance(connected, Connected)
    assert connected.tunnel.device == "miragevpn0"
    assert ("server_route", (SERVER, GATEWAY, "eth0")) in h.routing.calls
    assert h.routing.calls.index(("open_tun", "miragevpn0")) < h.routing.calls.index(
        ("configure", "miragevpn0")
    )
    assert [c for c in h.routing.calls if c[0] == "open_tun"] == [("open_tun", "miragevpn0")]
    assert h.routing.tuns[0].closed  # the daemon's tun goes with it
    assert "STOPPING=1" in h.notes[-1]


def test_no_ready_when_the_blocking_policy_fails() -> None:
    h = Harness([[("hold", None)]])
    h.firewall.fail = lambda policy: isinstance(policy, Blocked)
    assert run(h.daemon.run()) is ExitCode.FIREWALL
    assert not any("READY=1" in note for note in h.notes)
    assert h.sessions == []


def test_unreadable_facts_refuse_to_start() -> None:
    h = Harness([])

    def broken() -> Surroundings:
        raise OSError("QubesDB is not running")

    h.daemon._read_surroundings = broken
    assert run(h.daemon.run()) is ExitCode.CONFIG
    assert h.firewall.applied == []


# ---------------------------------------------------------------- ends


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (AuthFailed("bad password"), "authentication failed"),
        (RemoteProtocolError("server halted the session: bye"), "halted"),
    ],
)
def test_auth_failed_and_halt_hold_until_the_profile_changes(
    error: BaseException, words: str
) -> None:
    h = Harness([[("connect", SERVER), end(words, error)], [("connect", SERVER), ("hold", None)]])

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, Held))
        await asyncio.sleep(0.2)  # far beyond the back-off: no new session while held
        assert len(h.sessions) == 1
        assert h.firewall.policies[-1] == "Blocked"
        assert any(words in note and "blocked" in note for note in h.notes)
        h.daemon.profile_changed()
        await h.until(lambda: len(h.sessions) == 2 and isinstance(h.daemon.phase, Dialing))
        h.daemon.stop()
        assert await task is ExitCode.OK

    run(scenario())


def test_a_one_time_code_is_waited_for_blocked_and_answer_supplies_it() -> None:
    h = Harness([[("ask", "Enter the code"), ("connect", SERVER), ("up", settings()),
                  ("hold", None)]])  # fmt: skip

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, Asking))
        assert h.daemon.phase == Asking(text="Enter the code", dynamic=True)
        assert h.firewall.policies[-1] == "Blocked"
        assert any("waiting for a one-time code: Enter the code" in n for n in h.notes)
        await asyncio.sleep(0.1)
        assert isinstance(h.daemon.phase, Asking)  # still waiting, still blocked
        assert h.daemon.answer("271828") is None
        await h.until(lambda: isinstance(h.daemon.phase, Up))
        assert "no one-time code is asked" in (h.daemon.answer("1") or "")
        h.daemon.stop()
        assert await task is ExitCode.OK

    run(scenario())
    assert h.sessions[0].codes == ["271828"]
    assert h.firewall.policies[:3] == ["Blocked", "Blocked", "Connecting"]


def test_no_code_in_time_holds_until_reconnect() -> None:
    h = Harness([[("ask", "Enter the code")]], answer_timeout=0.1)

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, Held))
        phase = h.daemon.phase
        assert isinstance(phase, Held) and "no one-time code was given within 0s" in phase.reason
        await asyncio.sleep(0.3)  # far beyond the back-off: no new session while held
        assert len(h.sessions) == 1 and h.firewall.policies[-1] == "Blocked"
        assert "no one-time code is asked" in (h.daemon.answer("1") or "")
        h.daemon.reconnect()  # asks again
        await h.until(lambda: len(h.sessions) == 2)
        h.daemon.stop()
        assert await task is ExitCode.OK

    run(scenario())


def test_transient_ends_reconnect_forever_with_backoff() -> None:
    failures = [[("connect", SERVER), end("cannot connect; retries exhausted", RuntimeError("x"))]]
    h = Harness(failures * 4 + [[("connect", SERVER), ("up", settings()), ("hold", None)]])

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, Up))
        h.daemon.stop()
        await task

    run(scenario())
    waits = [p.retry_in for p in h.daemon.phases if isinstance(p, Waiting) and p.retry_in]
    assert waits == [0.01, 0.02, 0.04, 0.08]  # doubling (BACKOFF_FIRST patched to 10 ms)
    assert len(h.sessions) == 5


def test_a_profile_that_cannot_be_used_holds_and_says_why() -> None:
    attempts: list[int] = []

    def profile() -> Profile:
        attempts.append(1)
        if len(attempts) == 1:
            raise ProfileError("two .ovpn files and no /vm-config/miragevpn-profile: choose one")
        return load_profile()

    h = Harness([[("connect", SERVER), ("hold", None)]], profile=profile)

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, Held))
        assert "choose one" in h.notes[-1]
        await asyncio.sleep(0.1)
        assert len(attempts) == 1
        h.daemon.profile_changed()
        await h.until(lambda: isinstance(h.daemon.phase, Dialing))
        h.daemon.stop()
        await task

    run(scenario())


# ---------------------------------------------------------------- failures to apply


def test_connected_policy_failing_falls_back_to_blocked_and_retries() -> None:
    h = Harness([[("connect", SERVER), ("up", settings()), ("hold", None)],
                 [("connect", SERVER), ("hold", None)]])  # fmt: skip
    h.firewall.fail = lambda policy: isinstance(policy, Connected) and len(h.sessions) == 1

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: len(h.sessions) == 2 and isinstance(h.daemon.phase, Dialing))
        h.daemon.stop()
        await task

    run(scenario())
    # the failed Connected left Blocked in force (firewall fallback), never anything open
    assert h.firewall.policies[:4] == ["Blocked", "Connecting", "Blocked", "Blocked"]
    assert not any(isinstance(p, Up) for p in h.daemon.phases)


def test_connecting_policy_failing_does_not_connect() -> None:
    h = Harness([[("connect", SERVER), ("up", settings())], [("hold", None)]])
    h.firewall.fail = lambda policy: isinstance(policy, Connecting) and len(h.sessions) == 1

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: len(h.sessions) == 2)
        h.daemon.stop()
        await task

    run(scenario())
    assert "Connected" not in h.firewall.policies
    assert ("configure", "miragevpn0") not in h.routing.calls


# ---------------------------------------------------------------- changes


def test_connected_ips_change_reapplies_the_current_policy_with_new_sets() -> None:
    h = Harness([[("connect", SERVER), ("up", settings()), ("hold", None)]])
    app = ipaddress.ip_address("10.137.0.21")

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, Up))
        count = len(h.firewall.applied)
        h.daemon.facts_changed()  # nothing changed: nothing applied
        assert len(h.firewall.applied) == count
        h.surroundings = Surroundings(
            firewall=Facts(socket_mark=0x6D76, connected_ips=frozenset({app})),
            uplink_gateway=GATEWAY,
        )
        h.daemon.facts_changed()
        policy, facts = h.firewall.applied[-1]
        assert isinstance(policy, Connected)
        assert facts.connected_ips == frozenset({app})
        h.daemon.stop()
        await task

    run(scenario())


def test_profile_switch_blocks_appvms_at_once_and_reconnects() -> None:
    h = Harness([[("connect", SERVER), ("up", settings()), ("hold", None)],
                 [("connect", OTHER), ("up", settings(OTHER)), ("hold", None)]])  # fmt: skip

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, Up))
        h.daemon.profile_changed()
        # synchronously: AppVMs are off before the old session is even closed
        assert h.firewall.policies[-1] == "Connecting"
        await h.until(lambda: isinstance(h.daemon.phase, Up) and len(h.sessions) == 2)
        h.daemon.stop()
        await task

    run(scenario())
    assert h.sessions[0].close_reasons == ["profile changed"]
    between = h.firewall.policies[3:6]
    assert between == ["Connecting", "Blocked", "Connecting"]  # never Connected in between
    assert ("server_route", (OTHER, GATEWAY, "eth0")) in h.routing.calls


# ---------------------------------------------------------------- the tick


def test_watchdog_and_host_route_come_back_after_the_uplink() -> None:
    h = Harness([[("connect", SERVER), ("up", settings()), ("hold", None)]], watchdog=0.01)

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, Up))
        h.routing.uplink_down = True
        before = len(h.routing.calls)
        await asyncio.sleep(0.1)
        assert len(h.routing.calls) == before  # cannot while the uplink is down
        h.routing.uplink_down = False
        await h.until(lambda: len(h.routing.calls) > before)
        assert h.routing.calls[-1] == ("server_route", (SERVER, GATEWAY, "eth0"))
        h.daemon.stop()
        await task

    run(scenario())
    assert h.notes.count("WATCHDOG=1") >= 3


def test_watchdog_interval_is_half_of_systemds() -> None:
    assert daemon_module.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert daemon_module.watchdog_interval({}) is None
    assert daemon_module.watchdog_interval({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}) is None
    assert daemon_module.watchdog_interval({"WATCHDOG_USEC": "x"}) is None


def test_gateway_config_retries_forever_with_a_capped_backoff() -> None:
    config = Config(connect_retry_max=3, connect_retry_max_delay=300.0)
    adjusted = daemon_module.gateway_config(config)
    assert adjusted.connect_retry_max is None
    assert adjusted.connect_retry_max_delay == lifecycle.BACKOFF_CAP


# ---------------------------------------------------------------- hostname remotes


def test_hostname_remotes_are_resolved_through_the_uplink_first() -> None:
    asked: list[tuple[str, tuple[Any, ...]]] = []
    configs: list[Config] = []

    async def resolver(host: str, servers: Any) -> list[Any]:
        asked.append((host, tuple(servers)))
        if host == "gone.example.test":
            raise daemon_module.resolve.ResolveError("NXDOMAIN")
        return [SERVER]

    def profile() -> Profile:
        remotes = (Remote(host="vpn.example.test"), Remote(host="gone.example.test"))
        return Profile(name="p", config=Config(remotes=remotes), client_factory=None)  # type: ignore[arg-type]

    h = Harness([[("connect", SERVER), ("hold", None)]], profile=profile)
    h.daemon._resolver = resolver
    real_factory = h.daemon._session_factory

    def capture(p: Profile, d: GatewayDaemon) -> Any:
        configs.append(p.config)
        return real_factory(p, d)

    h.daemon._session_factory = capture

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, Dialing))
        h.daemon.stop()
        await task

    run(scenario())
    assert [host for host, _ in asked] == ["vpn.example.test", "gone.example.test"]
    assert asked[0][1] == FACTS.uplink_dns
    resolving = h.firewall.applied[1][0]
    assert resolving == Connecting(endpoints=(), resolve_via_uplink_dns=True)
    assert h.firewall.policies[2] == "Connecting"  # then the endpoint itself
    assert [r.host for r in configs[0].remotes] == [str(SERVER)]


def test_unresolvable_server_is_retried_blocked() -> None:
    async def resolver(host: str, servers: Any) -> list[Any]:
        raise daemon_module.resolve.ResolveError(f"cannot resolve {host}")

    def profile() -> Profile:
        config = Config(remotes=(Remote(host="vpn.example.test"),))
        return Profile(name="p", config=config, client_factory=None)  # type: ignore[arg-type]

    h = Harness([], profile=profile)
    h.daemon._resolver = resolver

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(
            lambda: sum(isinstance(p, Waiting) and p.retry_in > 0 for p in h.daemon.phases) >= 2
        )
        h.daemon.stop()
        await task

    run(scenario())
    assert h.sessions == []  # never connected without an address
    assert set(h.firewall.policies) == {"Blocked", "Connecting"}
    assert all(
        not p.endpoints for p, _ in h.firewall.applied if isinstance(p, Connecting)
    )  # only the uplink DNS was ever opened


def test_a_profile_change_while_resolving_starts_over_with_the_new_profile() -> None:
    gate = asyncio.Event()
    names: list[str] = []

    async def resolver(host: str, servers: Any) -> list[Any]:
        await gate.wait()
        return [SERVER]

    def profile() -> Profile:
        name = f"p{len(names)}"
        names.append(name)
        host = "vpn.example.test" if len(names) == 1 else str(SERVER)
        return Profile(name=name, config=Config(remotes=(Remote(host=host),)), client_factory=None)  # type: ignore[arg-type]

    h = Harness([[("connect", SERVER), ("hold", None)]], profile=profile)
    h.daemon._resolver = resolver

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, lifecycle.Resolving))
        h.daemon.profile_changed()
        gate.set()
        await h.until(lambda: isinstance(h.daemon.phase, Dialing))
        h.daemon.stop()
        await task

    run(scenario())
    assert names == ["p0", "p1"]
    assert len(h.sessions) == 1  # the first profile's session never started


@pytest.mark.parametrize("fails", [False, True])
def test_connections_are_flushed_after_blocked_and_before_ready(fails: bool) -> None:
    h = Harness([[("hold", None)]])
    order: list[str] = []

    def flush() -> int:
        order.append(
            f"flush after {h.firewall.policies}, ready {any('READY' in n for n in h.notes)}"
        )
        if fails:
            raise RuntimeError("no nf_conntrack_netlink")
        return 3

    h.daemon._flush = flush

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: any("READY=1" in n for n in h.notes))
        h.daemon.stop()
        assert await task is ExitCode.OK  # a failed flush is said, not fatal

    run(scenario())
    assert order == ["flush after ['Blocked'], ready False"]


def test_status_carries_the_blocked_traffic_report_and_survives_its_failure() -> None:
    entry = {"source": {"address": "10.137.0.12", "name": "work-vm"}, "packets": 1}
    calls: list[int] = []

    def report() -> tuple[dict[str, Any], ...]:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("nft is gone")
        return (entry,)

    harness = Harness(scripts=[])
    harness.daemon = GatewayDaemon(
        read_surroundings=lambda: SURROUNDINGS,
        load_profile=load_profile,
        firewall=harness.firewall,
        routing=harness.routing,
        blocked_report=report,
        report_mode="counters",
    )
    first = harness.daemon.view()
    assert first.blocked == (entry,) and first.report_mode == "counters"
    second = harness.daemon.view()  # the report failing never fails the status
    assert second.blocked == () and second.report_mode == "counters"
