"""SoftEther VPN Server (Debian `softether-vpnserver`, 5.01) inside a test namespace.

SoftEther's OpenVPN-compatible server is what the VPN Gate volunteer network runs. Its
defaults are what the tests want: the OpenVPN protocol enabled on UDP and TCP port 1194, no
cipher negotiation (its options string names AES-128-CBC and SHA1), user/password
authentication against the Virtual Hub DEFAULT, SecureNAT's DHCP giving 192.168.30.x with
192.168.30.1 as the virtual host and gateway (it pushes redirect-gateway).

The Debian build keeps its state in fixed folders (/var/lib/softether, /var/log/softether,
/run/softether). The server runs in its own mount namespace (`unshare -m`, private
propagation) with a per-test folder bound over each, so runs never share or leave state; the
three empty mount points are created on the host if missing (the package's systemd unit would
create them on first start). Configuration goes through `vpncmd` on the admin port 5555 inside
the namespace; file names are relative (vpncmd reads "/..." as a parameter).

    with SoftEtherServer.start(ns, workdir, user="test", password="s3cret") as server:
        server.fingerprint        # SHA-256 of its certificate, for `peer-fingerprint`
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.netns import Netns, stop_process, wait_until

VPNSERVER = "/usr/libexec/softether/vpnserver/vpnserver"
VPNCMD = shutil.which("vpncmd") or "/usr/bin/vpncmd"
STATE_DIRS = {"lib": "/var/lib/softether", "log": "/var/log/softether", "run": "/run/softether"}
ADMIN_PORT = 5555
START_TIMEOUT = 20.0
VIRTUAL_HOST = "192.168.30.1"  # SecureNAT's default virtual host / gateway
TUNNEL_NETWORK = "192.168.30.0/24"


def available() -> bool:
    return (
        os.path.exists(VPNSERVER) and os.path.exists(VPNCMD) and shutil.which("unshare") is not None
    )


def _listening(ns: Netns, port: int) -> bool:
    result = ns.run(["ss", "-Hltn", f"sport = :{port}"], check=False)
    return bool(result.stdout.strip())


@dataclass
class SoftEtherServer:
    ns: Netns
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    fingerprint: str = ""  # AA:BB:... (SHA-256 of the server certificate)
    transcripts: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, ns: Netns, workdir: Path, *, user: str, password: str) -> SoftEtherServer:
        workdir.mkdir(parents=True, exist_ok=True)
        binds = []
        for name, target in STATE_DIRS.items():
            os.makedirs(target, exist_ok=True)
            (workdir / name).mkdir(exist_ok=True)
            binds.append(f"mount --bind {workdir / name} {target}")
        script = " && ".join([*binds, f"exec {VPNSERVER} execsvc"])
        server = cls(ns, workdir)
        with (workdir / "vpnserver.out").open("ab") as out:
            server.proc = ns.spawn(["unshare", "-m", "--", "sh", "-c", script], stdout=out)
        try:
            wait_until(
                lambda: server._check_alive() and _listening(ns, ADMIN_PORT),
                START_TIMEOUT,
                what="SoftEther's admin port",
            )
            server.vpncmd(
                "ServerCertGet server.crt",
                "Hub DEFAULT",
                f"UserCreate {user} /GROUP:none /REALNAME:none /NOTE:none",
                f"UserPasswordSet {user} /PASSWORD:{password}",
                "SecureNatEnable",
            )
            # not parsed with cryptography: SoftEther's certificate has a negative serial number,
            # which newer releases warn about (and will refuse)
            der = ssl.PEM_cert_to_DER_cert((workdir / "server.crt").read_text())
            server.fingerprint = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
            wait_until(lambda: _listening(ns, 1194), START_TIMEOUT, what="port 1194")
        except BaseException:
            server.stop()
            raise
        return server

    def _check_alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"vpnserver exited with {self.proc.returncode}:\n{self.log_tail()}")
        return True

    def vpncmd(self, *commands: str) -> str:
        """Run `commands` in one vpncmd session (in the work folder); each must succeed."""
        script = self.workdir / "vpncmd.txt"
        script.write_text("\n".join(commands) + "\n")
        result = self.ns.run(
            [
                "sh",
                "-c",
                f"cd {self.workdir} && {VPNCMD} 127.0.0.1:{ADMIN_PORT} /SERVER /IN:vpncmd.txt",
            ],
            check=False,
            timeout=30,
        )
        self.transcripts.append(result.stdout)
        completed = result.stdout.count("The command completed successfully.")
        if result.returncode != 0 or completed != len(commands):
            raise RuntimeError(f"vpncmd failed ({completed}/{len(commands)} ok):\n{result.stdout}")
        return result.stdout

    def log_tail(self, lines: int = 40) -> str:
        logs = sorted((self.workdir / "log" / "server_log").glob("*.log"))
        text = logs[-1].read_text(errors="replace") if logs else "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> SoftEtherServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
