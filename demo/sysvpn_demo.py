"""The sys-vpn story: a simulated Qubes VPN qube with one AppVM behind it, all on this machine.

Run as root: `make demo` (or `.venv/bin/python demo/sysvpn_demo.py`). Everything happens in
throwaway network namespaces shaped like Qubes (sys-net, sys-vpn, an AppVM); your own network
is never touched, and everything is removed at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.gateway import UDP, World, built_world, start_server  # noqa: E402
from tests.helpers.netns import wait_until  # noqa: E402

STEP = 0


def step(title: str, why: str) -> None:
    global STEP
    STEP += 1
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}{STEP}. {title}{plain}")
    print(textwrap.indent(textwrap.fill(why, 92), "   "))


def show(text: str) -> None:
    print(textwrap.indent(text.rstrip(), "   | "))


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    argparse.ArgumentParser(description=__doc__).parse_args()
    if os.geteuid() != 0:
        print("The demo creates network namespaces, tun devices and firewalls: run it as root.")
        return 1
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="mvpn-sysvpn-demo-") as tmp:
            return story(Path(tmp))
    except KeyboardInterrupt:
        print("\nInterrupted: everything was cleaned up.")
        return 130


def appvm_fetch(world: World, timeout: float = 1.0) -> str:
    """What the AppVM gets when it asks the web server, in words."""
    probe = world.topo.probe(world.topo.appvms[0].ns, world.topo.web4, 80, timeout=timeout)
    if probe.outcome == "ok":
        seen = world.web.seen[-1] if world.web.seen else "?"
        return f"page received ({probe.reply.decode()!r}); the web server saw it come from {seen}"
    return f"no page: {probe.outcome} after {probe.seconds * 1000:.0f} ms"


def firewall_lines(world: World, since: int) -> str:
    lines = world.daemon_log().splitlines()[since:]
    wanted = ("firewall: applying", "tunnel up", "adding host route", "session lost",
              "ready", "stopped")  # fmt: skip
    return "\n".join(line.split(" ", 2)[-1] for line in lines if any(w in line for w in wanted))


def show_status(world: World) -> None:
    """`qubes-miragevpn status`, as root in sys-vpn would type it."""
    done = world.control("status")
    show("# qubes-miragevpn status")
    show(done.stdout if done.returncode == 0 else done.stderr)


def report_lines(world: World, since: int) -> str:
    lines = world.daemon_log().splitlines()[since:]
    return "\n".join(line.split(" ", 2)[-1] for line in lines if " tried to reach " in line)


def story(tmp: Path) -> int:
    step(
        "Build a simulated Qubes network",
        "Three network namespaces stand for three qubes: sys-net (with 'the internet' behind "
        "it: a web server, a DNS resolver, and the VPN server's address), sys-vpn (uplink eth0 "
        "in interface group 1, like Qubes sets it up, with Qubes' own nftables tables) and one "
        "AppVM whose net qube is sys-vpn (its vif in group 2). The VPN profile and its "
        "certificates go where a real sys-vpn keeps them: the config folder.",
    )
    with built_world(tmp, {"provider.ovpn": (UDP, ())}) as world:
        topo = world.topo
        names = (topo.sysnet.name, topo.sysvpn.name, topo.appvms[0].ns.name)
        show("namespaces: sys-net {}, sys-vpn {}, AppVM {}".format(*names))
        show(f"AppVM {topo.appvms[0].ip4} -> sys-vpn -> sys-net; web server {topo.web4}")

        step(
            "Boot: qubes-miragevpn block",
            "At boot a oneshot unit installs the blocking firewall before Qubes switches "
            "forwarding on. The AppVM is refused at once, nothing reaches the uplink.",
        )
        done = topo.sysvpn.run(
            world.qubes_miragevpn("block", "--qubesdb-file", str(world.facts_path)), check=False
        )
        show(
            done.stderr.strip().splitlines()[-1]
            if done.stderr.strip()
            else f"exit {done.returncode}"
        )
        show("AppVM: " + appvm_fetch(world))

        with world.facts_path.open("a") as facts:  # dom0: qvm-features sys-vpn vm-config...
            facts.write(f"/vm-config/miragevpn-names: '{topo.appvms[0].ip4}=work-vm'\n")

        step(
            "Start the gateway daemon, while the VPN server is still down",
            "`qubes-miragevpn run` in sys-vpn reads the network facts (here from a file standing "
            "in for QubesDB; dom0 has named the AppVM 'work-vm' for the report), tells systemd "
            "it is ready once the blocking policy is verified, and opens the firewall only for "
            "its own socket to the server while connecting. `qubes-miragevpn status` asks it "
            "over its root-only control socket what it is doing.",
        )
        started = world.start_daemon()
        wait_until(lambda: (world.control_dir / "control.sock").exists(), 15, interval=0.05,
                   what="the control socket")  # fmt: skip
        time.sleep(1.0)
        show_status(world)

        step(
            "Start the VPN server: connected",
            "A real OpenVPN 2.6 server starts in sys-net. The daemon, still trying, connects; "
            "the firewall then forwards the AppVM's packets into the tunnel, and nowhere else.",
        )
        server = start_server(world, "vpn", UDP)
        seconds = world.wait_through_tunnel(started, "first connect", report=False)
        show(f"connected {seconds:.2f} s after the daemon started; what it did:")
        show(firewall_lines(world, 0))
        show("systemd status line: " + world.notify.status())
        show_status(world)

        step(
            "The AppVM fetches a page through the tunnel",
            "The web server sees the request come from the tunnel address (10.8.0.x), not from "
            "sys-vpn's uplink address: it went through the VPN. The AppVM's DNS (Qubes' "
            "10.139.1.1) is answered by the VPN's resolver, through the tunnel as well.",
        )
        with topo.capture() as cap:
            show("AppVM: " + appvm_fetch(world))
            dns = topo.probe(topo.appvms[0].ns, topo.virtual_dns[0], 53, proto="udp")
            show(f"AppVM DNS to {topo.virtual_dns[0]}: answered by {dns.reply.decode()!r} "
                 f"(it saw {world.vpn_dns.seen[-1] if world.vpn_dns.seen else '?'})")  # fmt: skip
        session = len(cap.frames_from_sysvpn())
        show(f"on the uplink: {session} frames from sys-vpn, {len(world.leaks(cap))} of them "
             "not the encrypted session")  # fmt: skip

        step(
            "Stop the VPN server: the AppVM is blocked, and the gateway says what it tried",
            "Without the tunnel the gateway goes back to its blocking policy: the AppVM's "
            "connections are refused instead of leaking out through sys-net. The refused "
            "attempts are reported per AppVM and destination in `status`, and once each in the "
            "journal (rate-limited).",
        )
        lines_before = len(world.daemon_log().splitlines())
        with topo.capture() as cap:
            server.stop()
            wait_until(lambda: world.fetch() is None, 15, interval=0.2,
                       what="the gateway to block")  # fmt: skip
            show("AppVM: " + appvm_fetch(world))
            for _ in range(2):
                outcome = topo.probe(topo.appvms[0].ns, topo.leak4, 443, timeout=1.0).outcome
            show(f"AppVM to {topo.leak4}:443, twice: {outcome}")
            show_status(world)
        show(f"on the uplink meanwhile: {len(world.leaks(cap))} frames not the encrypted session")
        show(firewall_lines(world, lines_before))
        wait_until(lambda: report_lines(world, lines_before), 10, interval=0.2,
                   what="the report's log line")  # fmt: skip
        show("the journal:")
        show(report_lines(world, lines_before))
        show("systemd status line: " + world.notify.status())

        step(
            "Start the server again: the gateway recovers by itself",
            "The daemon never stopped trying; as soon as the server answers, the tunnel is up "
            "and the firewall opens towards it again.",
        )
        server.spawn()
        server.wait_ready()
        seconds = world.wait_through_tunnel(time.monotonic(), "server back", report=False)
        show(f"traffic flows again {seconds:.2f} s after the server was back")
        show("AppVM: " + appvm_fetch(world))

        step(
            "Stop the daemon: still blocked",
            "The firewall table outlives the daemon (a crash too): the AppVM stays blocked "
            "until the daemon is back. Only `qubes-miragevpn unblock` opens the qube again.",
        )
        code = world.stop_daemon()
        show(f"daemon exited with {code}; AppVM: " + appvm_fetch(world))

        step("Clean up", "The servers are stopped and every namespace is deleted.")
    show("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
