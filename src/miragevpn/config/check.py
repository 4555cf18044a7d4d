"""`miragevpn-config-check FILE...`: is each config usable by this client?

Exit 0 when every file is usable (with a short summary of each), 1 otherwise, with
`FILE:LINE: message` lines. `--json` prints the model (secrets redacted), `--inline OUT` writes
the self-contained config (every referenced file inlined; mode 0600, atomically).
This module is the IO edge of the config package: it reads files and writes the output.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import enum
import ipaddress
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

from ..errors import ConfigError
from .format import format_config
from .model import Config, Secret, TlsAuth, TlsCrypt, TlsCryptV2
from .parse import parse_config
from .values import proto_name

MAX_FILE = 16 * 1024 * 1024  # a config or key file larger than this is a mistake


def file_reader(config_path: str) -> Callable[[str], bytes]:
    """Read files named in the config, relative to the config file's directory."""
    base = os.path.dirname(os.path.abspath(config_path))

    def read(path: str) -> bytes:
        full = path if os.path.isabs(path) else os.path.join(base, path)
        if path == "stdin":
            raise ConfigError("reading from stdin is not supported; give a file")
        if os.path.isdir(full):
            raise ConfigError("is a directory")
        with open(full, "rb") as f:
            data = f.read(MAX_FILE + 1)
        if len(data) > MAX_FILE:
            raise ConfigError(f"larger than {MAX_FILE} bytes")
        return data

    return read


def to_jsonable(value: object, *, reveal: bool = False) -> object:
    if isinstance(value, Secret):
        return base64.b64encode(value.value).decode() if reveal else "<redacted>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name), reveal=reveal)
            for f in dataclasses.fields(value)
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_jsonable(v, reveal=reveal) for v in value]
    if isinstance(value, frozenset):
        return sorted(to_jsonable(v, reveal=reveal) for v in value)  # type: ignore[type-var]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, ipaddress._BaseAddress | ipaddress._BaseNetwork | ipaddress.IPv6Interface):
        return str(value)
    return value


def summary(c: Config) -> list[str]:
    lines = []
    for r in c.remotes:
        lines.append(f"  remote {r.host} port {r.port} {proto_name(r.proto)}")
    p = c.tls_protection
    protection = {
        TlsAuth: "tls-auth",
        TlsCrypt: "tls-crypt",
        TlsCryptV2: "tls-crypt-v2",
    }.get(type(p), "none (plain TLS)")
    if isinstance(p, TlsAuth):
        direction = "bidirectional" if p.direction is None else f"key-direction {int(p.direction)}"
        protection += f" ({c.auth}, {direction})"
    lines.append(f"  control channel: {protection}")
    ciphers = ":".join(c.data_ciphers)
    if c.data_ciphers_fallback:
        ciphers += f" (fallback {c.data_ciphers_fallback})"
    lines.append(f"  data ciphers: {ciphers}")
    trust = []
    if c.ca:
        trust.append(f"{c.ca.count('BEGIN CERTIFICATE')} CA certificate(s)")
    if c.peer_fingerprints:
        trust.append(f"{len(c.peer_fingerprints)} peer fingerprint(s)")
    if c.remote_cert_tls_server:
        trust.append("remote-cert-tls server")
    if c.verify_x509_name:
        trust.append(f"verify-x509-name {c.verify_x509_name.name} {c.verify_x509_name.kind.value}")
    lines.append(f"  server check: {', '.join(trust)}")
    auth = []
    if c.cert:
        auth.append("certificate")
    if c.pkcs12:
        auth.append("PKCS#12")
    if c.auth_user_pass:
        who = c.auth_user_pass.username
        auth.append(f"user/password ({'user ' + who if who else 'asked at run time'})")
    lines.append(f"  client auth: {' + '.join(auth)}")
    for w in c.warnings:
        where = f"line {w.line}: " if w.line else ""
        lines.append(f"  warning: {where}{w.directive}: {w.message}")
    if c.ignored:
        names = ", ".join(f"{i.name} (line {i.line})" for i in c.ignored)
        lines.append(f"  ignored: {names}")
    return lines


def write_private(path: str, text: str) -> None:
    """Write `text` to `path` with mode 0600, atomically (temp file in the same dir + rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".miragevpn-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_file(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=path) from None
    if len(data) > MAX_FILE:
        raise ConfigError(f"larger than {MAX_FILE} bytes", file=path)
    try:
        return parse_config(data, read_file=file_reader(path))
    except ConfigError as exc:
        raise exc.with_file(path) from None
    except RecursionError:
        raise ConfigError("too deeply nested", file=path) from None


def format_error(exc: ConfigError) -> str:
    where = exc.file or "<config>"
    if exc.line is not None:
        where += f":{exc.line}"
    prefix = f"{exc.directive}: " if exc.directive else ""
    return f"{where}: {prefix}{exc.message}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="miragevpn-config-check",
        description="Check OpenVPN client configs: is each one usable by this client?",
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print the parsed model (redacted)")
    parser.add_argument(
        "--inline", metavar="OUT", help="write the self-contained config (one FILE only)"
    )
    args = parser.parse_args(argv)
    if args.inline and len(args.files) != 1:
        parser.error("--inline takes exactly one FILE")
    status = 0
    documents: list[object] = []
    for path in args.files:
        try:
            config = check_file(path)
        except ConfigError as exc:
            print(format_error(exc), file=sys.stderr)
            status = 1
            continue
        if args.json:
            documents.append({"file": path, "config": to_jsonable(config)})
        else:
            print(f"{path}: usable")
            print("\n".join(summary(config)))
        if args.inline:
            try:
                write_private(args.inline, format_config(config))
            except OSError as exc:
                print(f"{args.inline}: cannot write: {exc.strerror or exc}", file=sys.stderr)
                status = 1
    if args.json:
        print(json.dumps(documents if len(args.files) > 1 else (documents or [None])[0], indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
