"""Materialise corpus configs with generated key material, and run the real OpenVPN on them.

Corpus files keep their original shape but hold placeholders instead of key material
(`{{CA}}`, `{{CERT}}`, `{{KEY}}`, `{{ENCRYPTED_KEY}}`, `{{ENCRYPTED_KEY_TRADITIONAL}}`,
`{{STATIC_KEY}}`, `{{TLS_CRYPT_V2_CLIENT}}`, `{{PKCS12_B64}}`, `{{PKCS12_PROTECTED_B64}}`,
`{{SERVER_FINGERPRINT}}`); files they reference are written next to them, with content chosen
by the directive that names them (a PKCS#12 bundle carries the CA, as real exports do, and is
protected by the passphrase when its name says "password"; `askpass` names the encrypted key's
passphrase, or a wrong one when its name says "wrong"). Corpus files are bytes: one may hold a
byte that is not UTF-8 in a comment.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from miragevpn.config.lexer import decode_config, lex
from tests.helpers.pki import ENCRYPTED_KEY_PASSPHRASE, Pki

CORPUS = Path(__file__).parent / "corpus"
OPENVPN = "/usr/sbin/openvpn"
FILE_DIRECTIVES = [
    "ca",
    "cert",
    "key",
    "tls-auth",
    "tls-crypt",
    "tls-crypt-v2",
    "secret",
    "pkcs12",
    "auth-user-pass",
    "extra-certs",
    "askpass",
]


def placeholders(pki: Pki) -> dict[str, str]:
    fingerprint = pki.server.cert.fingerprint(hashes.SHA256())

    def b64(data: bytes) -> str:
        text = base64.b64encode(data).decode()
        return "\n".join(text[i : i + 64] for i in range(0, len(text), 64))

    return {
        "{{CA}}": pki.ca.cert_pem.strip(),
        "{{CERT}}": pki.client.cert_pem.strip(),
        "{{KEY}}": pki.client.key_pem.strip(),
        "{{ENCRYPTED_KEY}}": pki.client_key_encrypted_pem.strip(),
        "{{ENCRYPTED_KEY_TRADITIONAL}}": pki.client_key_encrypted_traditional_pem.strip(),
        "{{STATIC_KEY}}": pki.ta_key.strip(),
        "{{TLS_CRYPT_V2_CLIENT}}": pki.tls_crypt_v2_client.strip(),
        "{{PKCS12_B64}}": b64(pki.client_p12),
        "{{PKCS12_PROTECTED_B64}}": b64(pki.client_p12_protected),
        "{{SERVER_FINGERPRINT}}": ":".join(f"{b:02X}" for b in fingerprint),
    }


def file_content(directive: str, pki: Pki, name: str = "") -> bytes:
    if directive == "pkcs12" and "password" in name:
        return pki.client_p12_protected
    if directive == "askpass" and "wrong" in name:
        return b"not the passphrase\n"
    return {
        "ca": pki.ca.cert_pem.encode(),
        "extra-certs": pki.ca.cert_pem.encode(),
        "cert": pki.client.cert_pem.encode(),
        "key": pki.client.key_pem.encode(),
        "tls-auth": pki.ta_key.encode(),
        "tls-crypt": pki.ta_key.encode(),
        "secret": pki.ta_key.encode(),
        "tls-crypt-v2": pki.tls_crypt_v2_client.encode(),
        "pkcs12": pki.client_p12,
        "auth-user-pass": b"someuser\nsomepassword\n",
        "askpass": ENCRYPTED_KEY_PASSPHRASE.encode() + b"\n",
    }[directive]


def materialise(name: str, pki: Pki, directory: Path) -> Path:
    """Write corpus config `name` with real key material, and the files it names, into dir."""
    raw = (CORPUS / f"{name}.ovpn").read_bytes()
    for marker, value in placeholders(pki).items():
        raw = raw.replace(marker.encode(), value.encode())
    config = directory / f"{name}.ovpn"
    config.write_bytes(raw)
    for d in lex(decode_config(raw)):
        if d.name in FILE_DIRECTIVES and d.inline is None and d.args:
            ref = d.args[0].text
            if ref and ref != "[inline]" and not os.path.isabs(ref):
                path = directory / ref
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(file_content(d.name, pki, ref))
                path.chmod(0o600)
    return config


# --------------------------------------------------------------------------- the real openvpn

# OpenVPN reports option and file errors, then exits, before it resolves or connects.
_FATAL = re.compile(r"Options error:|Exiting due to fatal error|Use --help for more information")
# ... except when it only wants to prompt for credentials, which needs no config change.
_PROMPT = "can't ask for"


def openvpn_verdict(config: Path, timeout: float = 4.0) -> tuple[str, str]:
    """("usable"|"rejected", log): run openvpn in a fresh empty network namespace."""
    ns = f"mvpncfg-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=10)
    try:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, OPENVPN, "--config", config.name, "--verb", "3"],
            cwd=config.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=10)
        log = out.decode("utf-8", "replace")
    finally:
        for _ in range(20):
            if subprocess.run(["ip", "netns", "del", ns], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
    if _PROMPT in log or not _FATAL.search(log):
        return "usable", log
    return "rejected", log
