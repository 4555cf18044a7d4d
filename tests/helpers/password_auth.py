"""A real OpenVPN server that checks usernames and passwords with a script a test writes.

Shared by tests/interop/test_auth_user_pass.py, tests/interop/test_challenge.py and
tests/qubes_miragevpn/gateway/test_challenge_topology.py: each writes its own script (the
logic it tests); this module writes it to disk, names it in the server's configuration and
reads back the lines the script appends to `calls` in the same directory.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.netns import NetnsPair
from tests.helpers.pki import PkiFiles


def verify_script_lines(workdir: Path, script: str) -> tuple[str, ...]:
    """Write `script` to workdir/verify.sh (executable) and return the server lines that make
    OpenVPN run it for every login (credentials in a file, `via-file`) and push an auth-token
    (`auth-gen-token`: renewal at least twice the hand-window)."""
    path = workdir / "verify.sh"
    path.write_text(script)
    path.chmod(0o755)
    return (
        "script-security 2",
        f"auth-user-pass-verify {path} via-file",
        f"tmp-dir {workdir}",
        "auth-gen-token 0 120",
    )


def password_client_config(pair: NetnsPair, files: PkiFiles, credentials: str, *extra: str) -> str:
    """Our client's profile: UDP, tls-crypt, AES-256-GCM, no client certificate, the
    `credentials` ("user\\npassword") inline, then `extra`."""
    lines = [
        "client",
        "dev tun",
        f"remote {pair.server_address} 1194 udp",
        "nobind",
        f"ca {files.ca}",
        "remote-cert-tls server",
        f"tls-crypt {files.ta_key}",
        "data-ciphers AES-256-GCM",
        "<auth-user-pass>",
        credentials,
        "</auth-user-pass>",
        *extra,
    ]
    return "\n".join(lines) + "\n"


def calls(workdir: Path) -> list[str]:
    """The lines the verify script appended to workdir/calls (none yet: an empty list)."""
    path = workdir / "calls"
    return path.read_text().splitlines() if path.exists() else []
