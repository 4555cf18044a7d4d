"""Our client, `miragevpn-client`, run as a subprocess inside a test namespace.

It logs to a file; `wait_tunnel_up(n)` waits (bounded) for the n-th "tunnel up:" line the
unix client logs when a tunnel is configured, and fails with the log's tail if the process exits.
`stats()` sends SIGUSR1 and returns the "statistics:" line it makes the client log, parsed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.netns import Netns, stop_process

MIRAGEVPN_CLIENT = str(Path(sys.executable).with_name("miragevpn-client"))
TUNNEL_UP = "tunnel up:"
UP_TIMEOUT = 30.0
STATS = "statistics: "
STATS_TIMEOUT = 5.0


@dataclass(frozen=True)
class ClientStats:
    """One "statistics:" line of the unix client (describe.describe_stats), parsed."""

    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    tunnel_in: int
    tunnel_out: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason in words -> count
    decompressed: int = 0  # packets the server compressed and we decompressed

    @classmethod
    def parse(cls, line: str) -> ClientStats:
        text = line[line.index(STATS) + len(STATS) :]
        match = re.fullmatch(
            r"in (\d+) packets \((\d+) bytes\), out (\d+) packets \((\d+) bytes\), "
            r"tunnel packets in (\d+) out (\d+), "
            r"(?:decompressed (\d+) packets \(\d+ -> \d+ bytes\), )?"
            r"dropped (\d+)(?: \((.*)\))?",
            text.strip(),
        )
        if match is None:
            raise AssertionError(f"not a statistics line: {line!r}")
        groups = match.groups()
        numbers = [int(n) for n in groups[:6]] + [int(groups[7])]
        dropped: dict[str, int] = {}
        for item in (groups[8] or "").split(", "):
            if item:
                reason, count = item.rsplit(" ", 1)
                dropped[reason] = int(count)
        assert sum(dropped.values()) == numbers[6], f"drops do not add up: {line!r}"
        return cls(*numbers[:6], dropped=dropped, decompressed=int(groups[6] or 0))

    def drops_since(self, before: ClientStats) -> dict[str, int]:
        """Reasons whose count grew since `before`, with how much."""
        return {
            reason: n - before.dropped.get(reason, 0)
            for reason, n in self.dropped.items()
            if n > before.dropped.get(reason, 0)
        }


def engine_ready() -> bool:
    """The engine client and config parser exist (they are written in parallel with this)."""
    try:
        import miragevpn.client  # noqa: F401
        from miragevpn.config import parse_config  # noqa: F401
    except ImportError:
        return False
    return True


def private_hosts(hosts_path: Path) -> list[str]:
    """A command prefix: the program after it runs in a new mount namespace (private
    propagation, so nothing reaches the machine's) where `hosts_path` is bind-mounted over
    /etc/hosts. `unshare` and `sh -c exec` replace themselves: the PID stays the program's."""
    script = 'mount --bind "$1" /etc/hosts && shift && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(hosts_path)]  # fmt: skip


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class OurClient:
    ns: Netns
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(
        cls,
        ns: Netns,
        config_text: str,
        workdir: Path,
        *,
        args: tuple[str, ...] = (),
        hosts: str | None = None,
        stdin: int | None = subprocess.DEVNULL,
    ) -> OurClient:
        """`hosts`: the text of an /etc/hosts that only this client sees (bind-mounted in a
        private mount namespace of its own; the machine's /etc/hosts is not touched), so that
        libc's getaddrinfo resolves test names for real. `stdin`: e.g. a pty's terminal end,
        for the client's prompts."""
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "miragevpn-client.conf"
        config.write_text(config_text)
        log = workdir / "miragevpn-client.log"
        argv = [MIRAGEVPN_CLIENT, str(config), *args]
        if hosts is not None:
            hosts_path = workdir / "hosts"
            hosts_path.write_text(hosts)
            argv = [*private_hosts(hosts_path), *argv]
        with log.open("ab") as out:
            proc = ns.spawn(argv, stdout=out, stdin=stdin)
        return cls(ns, config, log, proc)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self) -> str:
        return _tail(self.log_text())

    def wait_tunnel_up(self, count: int = 1, timeout: float = UP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.log_text().count(TUNNEL_UP) < count:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"miragevpn-client exited {self.proc.returncode} before the tunnel was up:\n"
                    + self.tail()
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(f"tunnel not up after {timeout:g}s:\n" + self.tail())
            time.sleep(0.05)

    def stats_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if STATS in line]

    def stats(self, timeout: float = STATS_TIMEOUT) -> ClientStats:
        """SIGUSR1 (by PID), then the statistics line it logs (bounded wait), parsed."""
        before = len(self.stats_lines())
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while len(lines := self.stats_lines()) <= before:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"miragevpn-client exited {self.proc.returncode}:\n" + self.tail()
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no statistics line {timeout:g}s after SIGUSR1:\n" + self.tail()
                )
            time.sleep(0.02)
        return ClientStats.parse(lines[before])

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"miragevpn-client still running after {timeout:g}s:\n" + self.tail()
            ) from None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (by PID): the client should close in order and exit by itself."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop_process(self.proc, 1.0)
                raise AssertionError("miragevpn-client ignored SIGTERM:\n" + self.tail()) from None
        return self.proc.returncode

    def __enter__(self) -> OurClient:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc)
