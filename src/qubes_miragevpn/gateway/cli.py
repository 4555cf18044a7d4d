"""`qubes-miragevpn run | block | unblock`: the gateway daemon and its firewall switch.

Wiring only: the daemon's life cycle is `gateway.daemon`, the facts `gateway.facts`, the
profile `gateway.profiles`, the firewall `gateway.nft`. Each subcommand returns an `ExitCode`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from miragevpn.printable import printable

from . import blocked, control, lifecycle, nft
from .conntrack import ConntrackError, flush_connections
from .daemon import (
    SOCKET_MARK,
    ExitCode,
    GatewayDaemon,
    Profile,
    ProfileError,
    Surroundings,
    watchdog_interval,
)
from .facts import (
    PROFILE,
    FactsChanged,
    FactsError,
    FactsInvalid,
    FactsSource,
    FactsSourceLost,
    FactsUnavailable,
    FileFacts,
    NetworkFacts,
    QubesDBFacts,
)
from .notices import Notifier
from .policy import QUBES_UPLINK, QUBES_VIRTUAL_DNS, Blocked, Facts, Policy, Report

log = logging.getLogger("qubes-miragevpn")

DEFAULT_CONFIG_DIR = Path("/rw/config/qubes-miragevpn")
CONTROL_DIR_ENV = "QUBES_MIRAGEVPN_CONTROL_DIR"  # overrides --control-dir's default

DESCRIPTION = """\
qubes-miragevpn makes this qube a VPN gateway: every packet of the qubes that use it as their
net qube goes through an OpenVPN tunnel, or nowhere.

How it fits together (in a Qubes template with this package installed):
  1. dom0:  qvm-service sys-vpn qubes-miragevpn on      (enables both systemd units)
            qvm-prefs my-appvm netvm sys-vpn
  2. sys-vpn: put the provider's .ovpn (and the files it names, and a 0600 credentials file
            for auth-user-pass) in /rw/config/qubes-miragevpn/. With several profiles there,
            choose one from dom0: qvm-features sys-vpn vm-config.miragevpn-profile work.ovpn
  3. At boot `qubes-miragevpn block` installs the blocking firewall before Qubes switches
     forwarding on; then `qubes-miragevpn run` connects, and opens the firewall for the
     AppVMs only towards the tunnel while it is up. It never opens anything else.

The firewall lives in its own nftables table (inet qubes-miragevpn). It stays when the daemon
stops or dies; only `qubes-miragevpn unblock` removes it.
"""

EPILOG = f"""\
exit codes:
  {ExitCode.OK:d}  done (run: stopped on request; the blocking policy stays in force)
  {ExitCode.CONFIG:d}  the network facts (QubesDB or --qubesdb-file) cannot be used
  {ExitCode.USAGE:d}  bad command line
  {ExitCode.FIREWALL:d}  the firewall could not be installed, verified or removed
  {ExitCode.SETUP_FAILED:d}  local set-up failed (netlink, tun device: are you root?)

examples:
  qubes-miragevpn run                                     what qubes-miragevpn.service runs
  qubes-miragevpn run --qubesdb-file facts.yaml --config-dir ./vpn   outside Qubes
  qubes-miragevpn block                                   what the boot-time unit runs
  systemctl stop qubes-miragevpn && qubes-miragevpn unblock   open the qube up again

Status: `qubes-miragevpn status` (or `--json`, fields in docs/status.md), or `systemctl status
qubes-miragevpn` (the status line says what it is doing and, when blocked, why); logs:
`journalctl -u qubes-miragevpn`. `qubes-miragevpn reconnect` retries at once (also after
AUTH_FAILED); `qubes-miragevpn answer CODE` gives the one-time code the VPN waits for (a
notification says when; without CODE it is read from the terminal or standard input);
`qubes-miragevpn profile NAME` switches profile (outside Qubes, with
--qubesdb-file; in Qubes, from dom0: qvm-features sys-vpn vm-config.miragevpn-profile NAME).
`status` also lists what the AppVMs tried to reach while refused (`run --blocked-report`); to
name them, from dom0: qvm-features sys-vpn vm-config.miragevpn-names "10.137.0.12=work-vm".
"""

FACTS_FILE_HELP = (
    "read the network facts from this YAML file (QubesDB paths to strings, e.g. "
    "'/qubes-gateway: 10.137.0.5') instead of QubesDB: for development and plain Linux"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qubes-miragevpn",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="how much to log (default: /vm-config/miragevpn-log-level, else info)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="run the gateway daemon in the foreground (systemd Type=notify)",
        description="Block, then connect and keep the tunnel up forever; the firewall follows "
        "every step (blocked / connecting / connected). Stop with SIGTERM.",
    )
    run.add_argument("--qubesdb-file", metavar="FILE", type=Path, help=FACTS_FILE_HELP)
    run.add_argument(
        "--blocked-report",
        choices=["auto", "queue", "counters", "off"],
        default="auto",
        help="how the daemon learns which AppVM tried to reach what while refused (status, "
        "log): queue = the first packet of each refused flow through an NFQUEUE (needs the "
        "netfilterqueue module and the kernel's nftables queue), counters = nftables "
        "counters, auto = queue when possible, else counters (default); docs/security.md",
    )
    run.add_argument(
        "--config-dir",
        metavar="DIR",
        type=Path,
        default=DEFAULT_CONFIG_DIR,
        help=f"where the profiles, side files and credentials are (default {DEFAULT_CONFIG_DIR})",
    )
    block = commands.add_parser(
        "block",
        help="install the blocking firewall policy and exit (run at boot)",
        description="Install and verify the Blocked policy: AppVM traffic goes nowhere, the "
        "qube's own processes cannot use the uplink. It stays until `unblock`. Without "
        "usable facts it blocks with Qubes' defaults (eth0, 10.139.1.1/.2) and says so.",
    )
    block.add_argument("--qubesdb-file", metavar="FILE", type=Path, help=FACTS_FILE_HELP)
    control_help = (
        f"the daemon's control socket folder (default ${CONTROL_DIR_ENV}, else "
        f"{control.CONTROL_DIR})"
    )
    run.add_argument(
        "--control-dir", metavar="DIR", type=Path, default=default_control_dir(), help=control_help
    )
    status = commands.add_parser(
        "status",
        help="what the running daemon is doing: blocked / connecting / connected, and why",
        description="Ask the running daemon (root only). Field names of --json: docs/status.md.",
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    reconnect = commands.add_parser(
        "reconnect",
        help="start a new session now (AppVMs blocked until it is up; also retries after "
        "AUTH_FAILED or HALT)",
    )
    profile = commands.add_parser(
        "profile",
        help="switch to another profile in the config folder and reconnect (firewall closed "
        "throughout)",
        description="Writes the selection as dom0's vm-config.miragevpn-profile would (with "
        "--qubesdb-file: into that file) and reconnects.",
    )
    profile.add_argument("name", metavar="NAME", help="the profile's file name, e.g. work.ovpn")
    answer = commands.add_parser(
        "answer",
        help="give the one-time code the VPN login waits for (status says when and why)",
        description="The session waits (AppVMs blocked) for a one-time code: the profile's "
        f"static-challenge or the server's challenge; after {lifecycle.ANSWER_TIMEOUT:.0f}s "
        "without one it holds until `reconnect`. Without CODE, the code is read from the "
        "terminal (not echoed) or from standard input's first line, which keeps it out of "
        "the process list.",
    )
    answer.add_argument("code", metavar="CODE", nargs="?", help="the one-time code")
    for sub in (status, reconnect, profile, answer):
        sub.add_argument(
            "--control-dir",
            metavar="DIR",
            type=Path,
            default=default_control_dir(),
            help=control_help,
        )
    commands.add_parser(
        "unblock",
        help="remove the gateway's firewall table (what disabling the service needs)",
        description="Remove the inet qubes-miragevpn table. Stop the daemon first: a running "
        "daemon puts its policy back at its next step.",
    )
    return parser


# --------------------------------------------------------------------------- facts


def facts_source(path: Path | None) -> FactsSource:
    if path is not None:
        return FileFacts(path)
    from .qubesdb import QubesDBAdapter, load_binding

    return QubesDBFacts(QubesDBAdapter(load_binding()))


def surroundings_of(
    facts: NetworkFacts, *, uplink: str = QUBES_UPLINK, report: Report | None = None
) -> Surroundings:
    """What the daemon and the firewall need, from the network facts (Qubes' defaults where
    QubesDB is silent: the virtual DNS addresses every AppVM uses)."""
    down = facts.downstream
    return Surroundings(
        firewall=Facts(
            socket_mark=SOCKET_MARK,
            uplink=uplink,
            connected_ips=frozenset([*down.connected, *down.connected6]),
            virtual_dns=down.virtual_dns or QUBES_VIRTUAL_DNS,
            uplink_dns=facts.uplink.dns or QUBES_VIRTUAL_DNS,
            report=report,
        ),
        uplink_gateway=facts.uplink.gateway,
        uplink_gateway6=facts.uplink.gateway6,
    )


def profile_source(config_dir: Path, selection: Callable[[], str | None]) -> Callable[[], Profile]:
    """The daemon's `load_profile`: settings.yaml and the selected profile, read again at each
    session start (a fix takes effect on the next profile change or restart); anything the
    user must fix is a ProfileError, which keeps the gateway blocked and says why."""
    from ..files import ProfileFiles
    from ..session import engine_client_factory
    from .profiles import ProfileBlocked, profile_loader
    from .settings import SETTINGS_FILE, SettingsError, load_settings

    read_file = ProfileFiles(str(config_dir / SETTINGS_FILE), confine=True)
    loader = profile_loader(config_dir, selection, read_file=read_file)

    def load() -> Profile:
        try:
            settings = load_settings(config_dir / SETTINGS_FILE)
        except SettingsError as e:
            raise ProfileError(f"settings unusable: {e}") from None
        result = loader()
        if isinstance(result, ProfileBlocked):
            raise ProfileError(result.reason)
        for note in result.notes:
            log.info("%s", note)
        return Profile(
            name=result.name,
            config=result.config,
            client_factory=engine_client_factory(result.credentials),
            dns=settings.dns,
        )

    return load


DEFAULT_SURROUNDINGS = Surroundings(firewall=Facts(socket_mark=SOCKET_MARK), uplink_gateway=None)


class NftFirewall:
    """`daemon.Firewall` on the kernel: one transaction, verified, Blocked on failure."""

    def __init__(
        self, backend: nft.NftBackend, *, before: Callable[[], object] | None = None
    ) -> None:
        self._backend = backend
        self._before = before  # runs before each replacement (the report reads its counters)

    def apply(self, policy: Policy, facts: Facts) -> None:
        if self._before is not None:
            self._before()
        nft.apply_policy(policy, facts, backend=self._backend)


# --------------------------------------------------------------------------- commands


def block(path: Path | None) -> ExitCode:
    surroundings = DEFAULT_SURROUNDINGS
    try:
        surroundings = surroundings_of(facts_source(path).read())
    except Exception as e:  # FactsError, FactsUnavailable, QubesDBUnavailable: block anyway
        log.warning("network facts unusable (%s): blocking with Qubes' defaults", e)
    try:
        nft.apply_policy(Blocked(), surroundings.firewall, backend=nft.open_backend())
    except nft.FirewallError as e:
        log.error("cannot install the blocking policy: %s", e)
        return ExitCode.FIREWALL
    try:  # flows set up before the table (service enabled while AppVMs run) end here
        flush_connections()
    except ConntrackError as e:
        log.warning("%s (flows that predate the firewall may carry on)", e)
    log.info("blocked: AppVM traffic goes nowhere until the VPN tunnel is up")
    return ExitCode.OK


def unblock() -> ExitCode:
    try:
        nft.remove_all(backend=nft.open_backend())
    except nft.FirewallError as e:
        log.error("cannot remove the firewall table: %s", e)
        return ExitCode.FIREWALL
    log.info("unblocked: the gateway's firewall table is gone")
    return ExitCode.OK


def profile_selector(facts_file: Path | None, config_dir: Path) -> control.SelectProfile:
    """The `profile NAME` command's writer: with --qubesdb-file, the selection goes into that
    file (its watch reconnects the daemon); in Qubes the selection is dom0's to write."""

    def select(name: str) -> None:
        if "/" in name or name.startswith(".") or not (config_dir / name).is_file():
            raise ValueError(f"no profile {name!r} in {config_dir}")
        if facts_file is None:
            raise ValueError(
                "in Qubes the selection is dom0's: "
                f"qvm-features <this qube> vm-config.miragevpn-profile {name}"
            )
        import yaml

        data = yaml.safe_load(facts_file.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{facts_file} is not a mapping")
        data[PROFILE] = name
        tmp = facts_file.with_name(facts_file.name + ".tmp")
        tmp.write_text(yaml.safe_dump(data, default_flow_style=False), encoding="utf-8")
        os.replace(tmp, facts_file)
        log.info("profile selection set to %s in %s", name, facts_file)

    return select


def default_control_dir() -> Path:
    """--control-dir's default: $QUBES_MIRAGEVPN_CONTROL_DIR, else /run/qubes-miragevpn (the
    variable lets the qrexec service, which takes no arguments, reach another daemon's socket)."""
    return Path(os.environ.get(CONTROL_DIR_ENV) or control.CONTROL_DIR)


def ask(message: dict[str, object], directory: Path, *, as_json: bool = False) -> ExitCode:
    """The client commands: one request to the running daemon, its answer printed."""
    try:
        answer = control.request(message, directory=directory)
    except control.ControlError as e:
        print(f"qubes-miragevpn: {e}", file=sys.stderr)
        if as_json:  # scripts (and the qrexec service) still get one JSON object
            print(json.dumps({"ok": False, "error": str(e)}))
        return ExitCode.CONFIG
    if not answer.get("ok"):
        refused = f"qubes-miragevpn: the daemon refused: {answer.get('error')}"
        print(printable(refused), file=sys.stderr)
        return ExitCode.CONFIG
    status = answer.get("status")
    if isinstance(status, dict):
        if as_json:
            print(json.dumps(status, indent=2))
        else:  # profile text (errors, a challenge) reaches a terminal: escaped, line by line
            print("\n".join(map(printable, control.render(status).splitlines())))
    return ExitCode.OK


async def run(
    facts_file: Path | None,
    config_dir: Path,
    *,
    log_level: str | None = None,
    control_dir: Path = control.CONTROL_DIR,
    blocked_report: str = "auto",
) -> ExitCode:
    from ..rtnl import open_rtnl
    from .routing import GatewayRouting

    backend = nft.open_backend()
    try:
        source = facts_source(facts_file)
        facts = source.read()
    except (FactsError, FactsUnavailable, Exception) as e:
        log.error("cannot read the network facts: %s", e)
        with contextlib.suppress(nft.FirewallError):
            nft.apply_policy(Blocked(), DEFAULT_SURROUNDINGS.firewall, backend=backend)
        return ExitCode.CONFIG
    if log_level is None:  # the command line wins, then dom0's knob, then settings.yaml
        from .settings import SETTINGS_FILE, SettingsError, load_settings

        with contextlib.suppress(SettingsError):
            log_level = facts.log_level or load_settings(config_dir / SETTINGS_FILE).log_level
        if log_level is not None:
            logging.getLogger().setLevel(log_level.upper())
    current = {"facts": facts}
    try:
        rtnl = await open_rtnl()
    except OSError as e:
        log.error("cannot open a netlink socket: %s", e)
        return ExitCode.SETUP_FAILED
    routing = GatewayRouting(rtnl)
    notifier = Notifier(lambda: current["facts"].default_user)
    reporter = report_of(blocked_report, backend, lambda: current["facts"])
    if reporter is None:
        return ExitCode.CONFIG
    reporter.start(asyncio.get_running_loop())  # before any firewall names the queue
    daemon = GatewayDaemon(
        read_surroundings=lambda: surroundings_of(current["facts"], report=reporter.report),
        load_profile=profile_source(config_dir, lambda: current["facts"].profile),
        firewall=NftFirewall(backend, before=reporter.before_replacing),
        routing=routing,
        flush=flush_connections,
        watchdog=watchdog_interval(os.environ),
        on_phase=notifier.phase_changed,
        blocked_report=reporter.entries,
        report_mode=reporter.mode,
    )
    reporter.ledger.state = lambda: control.state_of(daemon.phase)
    follower = asyncio.ensure_future(follow(source, daemon, current))
    server = control.ControlServer(
        daemon, directory=control_dir, select_profile=profile_selector(facts_file, config_dir)
    )
    try:
        await server.start()
    except (OSError, control.ControlError) as e:  # the gateway works without it
        log.error("no control socket (status/reconnect/profile unavailable): %s", e)
    try:
        return await daemon.run()
    finally:
        await server.close()
        await reporter.close()
        await notifier.drain()
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await routing.close()


def report_of(
    asked: str, backend: nft.NftBackend, facts: Callable[[], NetworkFacts]
) -> blocked.Reporter | None:
    """The blocked-traffic reporter `--blocked-report` asks for (None: it cannot be had)."""
    problem = blocked.queue_module_missing() if asked in ("auto", "queue") else None
    has_queue = (
        problem is None and asked in ("auto", "queue") and nft.kernel_has_queue(backend=backend)
    )
    try:
        mode = blocked.choose_mode(asked, module_problem=problem, kernel_has_queue=has_queue)
    except RuntimeError as e:
        log.error("%s", e)
        return None
    ledger = blocked.Ledger(names=lambda: dict(facts().appvm_names))
    return blocked.Reporter(mode, ledger, backend)


class Follower(Protocol):
    """What `follow` drives (the daemon)."""

    def profile_changed(self) -> None: ...
    def facts_changed(self) -> None: ...


FOLLOW_RETRY = 1.0  # seconds before following the facts again after the stream failed


async def follow(
    source: FactsSource,
    daemon: Follower,
    current: dict[str, NetworkFacts],
    *,
    retry: float = FOLLOW_RETRY,
) -> None:
    """QubesDB (or the facts file) drives the daemon: a new profile selection reconnects,
    anything else (/connected-ips...) re-applies the current policy with the new facts. Runs
    until cancelled: a failure of the stream is logged and the stream followed again."""
    while True:
        try:
            async for update in source.changes():
                match update:
                    case FactsChanged(facts=facts, changed=changed):
                        current["facts"] = facts
                        if PROFILE in changed:
                            daemon.profile_changed()
                        daemon.facts_changed()
                    case FactsInvalid(error=error):
                        log.warning(
                            "network facts unusable (keeping the last good ones): %s", error
                        )
                    case FactsSourceLost(reason=reason):
                        log.warning(
                            "network facts source lost (%s); keeping the last facts", reason
                        )
            log.warning("the network facts stream ended; following it again in %.0f s", retry)
        except Exception as e:  # a bug or an unexpected error: the daemon must keep its watches
            log.error("following the network facts failed (%r); again in %.0f s", e, retry)
        await asyncio.sleep(retry)


def read_code() -> str:
    """The one-time code from the terminal (not echoed) or standard input's first line."""
    if sys.stdin.isatty():
        return getpass.getpass("One-time code: ").strip()
    return sys.stdin.readline(control.MAX_REQUEST).strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under systemd (INVOCATION_ID) the journal stamps the time itself.
    stamp = "" if os.environ.get("INVOCATION_ID") else "%(asctime)s "
    logging.basicConfig(
        level=(args.log_level or "info").upper(),
        format=stamp + "%(levelname)s %(message)s",
        stream=sys.stderr,
    )
    match args.command:
        case "block":
            return int(block(args.qubesdb_file))
        case "unblock":
            return int(unblock())
        case "status":
            return int(ask({"command": "status"}, args.control_dir, as_json=args.json))
        case "reconnect":
            return int(ask({"command": "reconnect"}, args.control_dir))
        case "profile":
            return int(ask({"command": "profile", "name": args.name}, args.control_dir))
        case "answer":
            code = args.code if args.code is not None else read_code()
            return int(ask({"command": "answer", "code": code}, args.control_dir))
        case "run":
            try:
                coroutine = run(
                    args.qubesdb_file,
                    args.config_dir,
                    log_level=args.log_level,
                    control_dir=args.control_dir,
                    blocked_report=args.blocked_report,
                )
                return int(asyncio.run(coroutine))
            except KeyboardInterrupt:
                return int(ExitCode.OK)
    return int(ExitCode.USAGE)


if __name__ == "__main__":
    sys.exit(main())
