"""A guided tour: our VPN client talking to a real OpenVPN server, all on this machine.

Run as root: `make demo` (or `.venv/bin/python demo/tunnel_demo.py [--real-client]`).
Everything happens inside two throwaway network namespaces; your own network is never touched,
and everything is removed at the end, also on Ctrl-C or an error.
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

from tests.helpers.netns import netns_pair_context  # noqa: E402
from tests.helpers.openvpn import (  # noqa: E402
    SERVER_TUN_ADDRESS,
    OpenVpnClient,
    OpenVpnServer,
    Protection,
    Scenario,
    client_config,
)
from tests.helpers.ourclient import OurClient, engine_ready  # noqa: E402
from tests.helpers.pki import make_pki, write_pki  # noqa: E402
from tests.helpers.traffic import MiB, ping, tcp_transfer  # noqa: E402

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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--real-client", action="store_true", help="use the real openvpn client instead of ours"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("The demo creates network namespaces and tun devices: run it as root.")
        return 1
    if not args.real_client and not engine_ready():
        print("The engine client is not there yet; try --real-client to see the set-up.")
        return 1
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="mvpn-demo-") as tmp:
            return tour(Path(tmp), real_client=args.real_client)
    except KeyboardInterrupt:
        print("\nInterrupted: everything was cleaned up.")
        return 130


def tour(workdir: Path, *, real_client: bool) -> int:
    who = "the real openvpn client" if real_client else "miragevpn-client (our client)"
    scenario = Scenario(transport="udp", protection=Protection.TLS_CRYPT)

    step(
        "Make a throwaway PKI",
        "A VPN server and client prove who they are with certificates signed by a CA they "
        "both trust. We make a fresh CA, a server and a client certificate, and a tls-crypt key "
        "(a shared secret that encrypts the handshake itself).",
    )
    files = write_pki(make_pki(), workdir / "pki")
    show("\n".join(sorted(p.name for p in (workdir / "pki").iterdir())))

    step(
        "Build two network namespaces joined by a virtual cable",
        "A namespace is a separate network stack: its own interfaces and routes. 'server' and "
        "'client' are joined by a veth pair (10.250.0.1 <-> 10.250.0.2); that cable stands for "
        "the internet. Nothing here touches this machine's real network.",
    )
    with netns_pair_context() as pair:
        show(f"server namespace {pair.server.name}: {pair.link.a_address}")
        show(f"client namespace {pair.client.name}: {pair.link.b_address}")

        step(
            "Before the tunnel: 10.8.0.1 is unreachable",
            "10.8.0.1 will be the server's address inside the tunnel. The client has no route "
            "to it yet, so a ping fails. If a ping works later, it went through the tunnel.",
        )
        result = pair.client.run(["ping", "-c", "1", "-W", "1", SERVER_TUN_ADDRESS], check=False)
        show(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr)

        step(
            "Start a real OpenVPN 2.6 server",
            "This is Debian's openvpn, the reference implementation. It hands out addresses in "
            "10.8.0.0/24 and keeps 10.8.0.1 for itself.",
        )
        with OpenVpnServer.start(
            pair.server, scenario, files, workdir, pair.server_address
        ) as server:
            show(server.config_path.read_text())

            step(
                f"Connect {who}",
                "The client resolves the server, opens UDP, does the TLS handshake inside "
                "tls-crypt, receives its address and routes (PUSH_REPLY), creates tun0 and "
                "configures it. Each change to the system is logged before it is made.",
            )
            client: OurClient | OpenVpnClient
            started = time.monotonic()
            if real_client:
                client = OpenVpnClient.start(
                    pair.client, scenario, files, workdir, pair.server_address
                )
            else:
                text = client_config(scenario, files, pair.server_address, real=False)
                show(text)
                client = OurClient.start(pair.client, text, workdir)
            with client:
                if isinstance(client, OurClient):
                    client.wait_tunnel_up()
                show(f"started, tunnel up after {time.monotonic() - started:.2f}s; its log:")
                lines = client.log_text().splitlines()
                show("\n".join(lines[-14:]))

                step(
                    "Look at the client's side",
                    "tun0 now has a tunnel address, and a route sends 10.8.0.0/24 into tun0.",
                )
                show(pair.client.run(["ip", "-br", "addr", "show", "dev", "tun0"]).stdout)
                show(pair.client.run(["ip", "route", "show", "dev", "tun0"]).stdout)

                step(
                    "Ping the server through the tunnel",
                    "Each ping is encrypted by the client, carried in a UDP datagram over the "
                    "cable, decrypted by the server, answered, and back again.",
                )
                ping(pair.client, SERVER_TUN_ADDRESS)
                show(f"3 of 3 pings to {SERVER_TUN_ADDRESS} answered")

                step(
                    "Send 1 MiB through the tunnel and check it",
                    "A small echo server listens on 10.8.0.1 inside the server namespace. The "
                    "client sends 1 MiB of random bytes; the server echoes them back. Both "
                    "directions are compared by SHA-256, and the server tells us the address "
                    "it saw: a 10.8.0.x address means the bytes came out of the tunnel.",
                )
                transfer = tcp_transfer(pair.server, pair.client, SERVER_TUN_ADDRESS, size=MiB)
                rate = 2 * transfer.bytes / transfer.seconds / MiB
                show(
                    f"{transfer.bytes} bytes each way, checksums match, peer {transfer.peer}, "
                    f"{transfer.seconds:.2f}s ({rate:.1f} MiB/s both directions)"
                )

                step(
                    "Stop the client",
                    "SIGTERM makes the client tell the server it is leaving, remove what it "
                    "added to the system, and exit.",
                )
                if isinstance(client, OurClient):
                    code = client.stop()
                    show(f"miragevpn-client exited with {code}")
                else:
                    client.stop()
                links = pair.client.run(["ip", "-br", "link"]).stdout
                show("tun0 is gone" if "tun0" not in links else "tun0 is STILL there")

        step(
            "Clean up",
            "The server is stopped, and both namespaces (with their cable) are deleted.",
        )
    show("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
