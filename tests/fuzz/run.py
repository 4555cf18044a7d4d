"""Mutation fuzzers for what a hostile profile or server controls: `make fuzz`.

    python -m tests.fuzz.run [--seconds 60] [--seed N] [--target config|pushed|control|compressed]

Four targets, each with its seeds and its oracle:
- config: the corpus (tests/configs/corpus, with real key material) and the hostile profiles of
  issue 8; `parse_config` may only raise `ConfigError`, and a config it accepts must survive
  `parse(format(cfg)) == cfg` and the checker's summary and JSON;
- pushed: PUSH_REPLY option lists (a 2.6 server's typical reply and hostile values), through
  `parse_pushed_options` and `resolve_tunnel_settings`: only the engine's errors may escape;
- control: control-channel plaintext as received (NUL-separated messages, continuations),
  through framing, classification, the continuation assembler and the above;
- compressed: decrypted data payloads (LZ4 v1/v2 and LZO frames, a decompression bomb) through
  every framing with decompression allowed: a payload within the limit or the engine's errors.

Inputs are mutated bytes (bit flips, random and "interesting" insertions, deletions, repeats,
line splices between seeds); inputs that are accepted join the pool, so mutations compound.
Anything else that escapes, or one input taking over a second, is a finding: printed (type,
message, where, the input's repr) and saved under .fuzz-findings/. Exit status 1 when there are
findings. Bounded by --seconds (an input in progress is finished).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import ipaddress
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miragevpn.config import Config, format_config, parse_config
from miragevpn.config.check import config_document, summary
from miragevpn.errors import MirageVPNError

FINDINGS = Path(".fuzz-findings")
POOL_LIMIT = 400
MAX_INPUT = 64 * 1024  # mutations compound; keep inputs around a real profile's size
SLOW = 1.0  # seconds for one input: parse time must stay linear, so this is a finding too
INTERESTING = [
    b"\x00", b"\x1b[2J", b"\xff", b"\xc3\xa9", b'"', b"'", b"\\", b"#", b";", b",", b"\n", b"\r\n",
    b"\t", b" ", b"<connection>\n", b"</connection>\n", b"<ca>\n", b"</ca>\n", b"[inline]",
    b"-----BEGIN CERTIFICATE-----\n", b"-----END CERTIFICATE-----\n", b"setenv opt ",
    b"push-continuation 2", b"0", b"-1", b"65535", b"65536", b"2147483647", b"2147483648",
    b"18446744073709551616", b"1e9", b"nan", b"0x10", b"255.255.255.255", b"0.0.0.0", b"::",
    b"fe80::1%eth0", b"2001:db8::/0", b"/0", b"%", b"..", b"/dev/stdin", b"infinite",
]  # fmt: skip


@dataclass
class Target:
    name: str
    seeds: list[bytes]
    run: Callable[[bytes], bool]  # True: accepted (joins the pool); raises only `ours`
    ours: tuple[type[BaseException], ...] = (MirageVPNError,)
    pool: list[bytes] = field(default_factory=list)
    runs: int = 0


@dataclass(frozen=True)
class Finding:
    target: str
    kind: str
    message: str
    where: str
    data: bytes


# --------------------------------------------------------------------------- mutation


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        pos = rng.randint(0, len(out))
        if op == 0 and out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            out[pos:pos] = rng.choice(INTERESTING)
        elif op == 3 and out:
            out[pos : pos + rng.randint(1, 64)] = b""
        elif op == 4 and out:
            start = rng.randrange(len(out))
            chunk = out[start : start + rng.randint(1, 128)]
            out[pos:pos] = chunk * rng.randint(1, 32)
        elif op == 5 and others:
            lines = rng.choice(others).splitlines(keepends=True)
            if lines:
                out[pos:pos] = rng.choice(lines)
        elif op == 6:
            lines = bytes(out).splitlines(keepends=True)
            rng.shuffle(lines)
            out = bytearray(b"".join(lines))
        elif op == 7:
            del out[pos:]
        else:
            words = bytes(out).split(b" ")
            if words:
                words[rng.randrange(len(words))] = rng.choice(INTERESTING)
            out = bytearray(b" ".join(words))
    return bytes(out)


def fuzz(
    targets: list[Target], seconds: float, seed: int, *, max_runs: int | None = None
) -> list[Finding]:
    """Run each target for its share of `seconds` (or `max_runs` inputs, if that comes first:
    a seeded run with a count is reproducible); the distinct findings."""
    rng = random.Random(seed)
    found: dict[tuple[str, str, str], Finding] = {}
    share = seconds / max(1, len(targets))
    for target in targets:
        target.pool = list(target.seeds)
        deadline = time.monotonic() + share
        while time.monotonic() < deadline and (max_runs is None or target.runs < max_runs):
            data = mutate(rng.choice(target.pool), rng, target.seeds)[:MAX_INPUT]
            finding = attempt(target, data)
            target.runs += 1
            if isinstance(finding, Finding):
                found.setdefault((finding.target, finding.kind, finding.where), finding)
            elif finding and len(target.pool) < POOL_LIMIT:
                target.pool.append(data)
            elif finding:  # a full pool keeps its seeds and renews the rest
                target.pool[rng.randrange(len(target.seeds), POOL_LIMIT)] = data
    return list(found.values())


def attempt(target: Target, data: bytes) -> bool | Finding:
    start = time.monotonic()
    try:
        accepted = target.run(data)
    except target.ours:
        accepted = False
    except Exception as exc:  # the point: anything else is a bug
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
        return Finding(target.name, type(exc).__name__, str(exc)[:300], where, data)
    elapsed = time.monotonic() - start
    if elapsed > SLOW:
        return Finding(target.name, "Slow", f"{elapsed:.1f} s for one input", target.name, data)
    return accepted


# --------------------------------------------------------------------------- targets


class RoundTripMismatch(AssertionError):
    """format_config wrote something that parses to another Config."""


def _no_files(name: str) -> bytes:
    raise FileNotFoundError(2, "No such file or directory", name)


def config_target() -> Target:
    from tests.configs.corpus_support import CORPUS, materialise
    from tests.helpers.pki import make_pki

    pki = make_pki()
    seeds: list[bytes] = []
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for path in sorted(CORPUS.glob("*.ovpn")):
            seeds.append(materialise(path.stem, pki, folder).read_bytes())
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix != ".ovpn":
                files[path.relative_to(folder).as_posix()] = path.read_bytes()
    fingerprint = ":".join(["AB"] * 32)
    head = f"client\ndev tun\nauth-user-pass creds\npeer-fingerprint {fingerprint}\n"
    seeds += [
        (head + "remote a 1194\n" * 50).encode(),
        (head + "<connection>\nremote a\nport 443\n</connection>\n" * 20).encode(),
        (head + "remote a\n<ca>\n" + "-----BEGIN A-----\n" * 50 + "</ca>\n").encode(),
        (head + 'remote "evil\x1b]0;owned\x07"\nconnect-retry 2147483647\n').encode(),
        (head + "remote a\nca /dev/stdin\nroute 0.0.0.0 0.255.255.255\n").encode(),
    ]
    files["creds"] = b"user\npass\n"

    def read(name: str) -> bytes:
        if name in files:
            return files[name]
        return _no_files(name)

    def run(data: bytes) -> bool:
        config = parse_config(data, read_file=read)
        try:
            back = parse_config(format_config(config), read_file=_no_files)
        except MirageVPNError as exc:
            raise RoundTripMismatch(f"the formatted config does not parse: {exc}") from None
        if back != config:
            raise RoundTripMismatch("parse(format(cfg)) != cfg")
        summary(config)
        config_document(config, {"auth_user_pass"})
        return True

    return Target("config", seeds, run)


def _engine(name: str) -> Any:
    """`name` from the module that has it (framing moves from push.py to messages.py)."""
    for module in ("miragevpn.messages", "miragevpn.push"):
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if found is not None:
            return found
    raise ImportError(name)


def _pushed_runner() -> Callable[[tuple[str, ...]], None]:
    from miragevpn.push import parse_pushed_options
    from miragevpn.tunnelsettings import resolve_tunnel_settings

    config: Config = parse_config(
        "client\ndev tun\nremote 192.0.2.1\nauth-user-pass\npeer-fingerprint "
        + ":".join(["AB"] * 32)
        + "\nredirect-gateway def1\n",
        read_file=_no_files,
    )
    known: dict[str, object] = {
        "remote_address": ipaddress.ip_address("192.0.2.1"),
        "cipher": "AES-256-GCM",
        "key_derivation": "tls-ekm",
    }
    params = inspect.signature(resolve_tunnel_settings).parameters
    extra = {k: v for k, v in known.items() if k in params}

    def apply(options: tuple[str, ...]) -> None:
        pushed = parse_pushed_options(options, config)
        resolve_tunnel_settings(config, pushed, **extra)

    return apply


TYPICAL_PUSH = (
    "route-gateway 10.8.0.1,topology subnet,ping 10,ping-restart 60,"
    "ifconfig 10.8.0.2 255.255.255.0,peer-id 0,cipher AES-256-GCM,"
    "protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500"
)
HOSTILE_PUSH = [
    "dhcp-option DNS 1.2.3.4;rm,dhcp-option DNS fe80::1%eth0,dhcp-option DOMAIN x; rm -rf /",
    "ifconfig-ipv6 2001:db8:9::2/0 2001:db8:9::1,route-ipv6 fe80::%eth0/64",
    "topology subnet,ifconfig 200.0.0.2 128.0.0.0,route 0.0.0.0 0.0.0.0,tun-mtu 68",
    "route 10.3.0.0 255.255.0.0 1.1.1.1 2147483647,route 10.0.0.0 0.255.255.255",
    "redirect-gateway def1 block-local bypass-dhcp local nonsense,dhcp-option DNS6 ::",
    "route-gateway 10.8.0.1,ifconfig 10.8.0.2 10.8.0.1,route 192.0.2.1 255.255.255.255",
]


def pushed_target() -> Target:
    apply = _pushed_runner()

    def run(data: bytes) -> bool:
        text = data.decode("utf-8", "replace")
        apply(tuple(text.split(",")))
        return True

    seeds = [s.encode() for s in [TYPICAL_PUSH, *HOSTILE_PUSH]]
    return Target("pushed", seeds, run)


def control_target() -> Target:
    split = _engine("split_control_messages")
    classify = _engine("parse_control_message")
    assembler_type = _engine("PushReplyAssembler")
    push_reply = _engine("PushReply")
    apply = _pushed_runner()

    def run(data: bytes) -> bool:
        buffer = bytearray(data)
        assembler = assembler_type()
        for text in split(buffer):
            message = classify(text)
            if isinstance(message, push_reply):
                options = assembler.add(message)
                if options is not None:
                    apply(options)
        return True

    seeds = [
        f"PUSH_REPLY,{TYPICAL_PUSH}\x00".encode(),
        f"PUSH_REPLY,{HOSTILE_PUSH[0]},push-continuation 2\x00"
        f"PUSH_REPLY,{HOSTILE_PUSH[2]},push-continuation 1\x00".encode(),
        b"AUTH_FAILED,TEMP[backoff 30,advance no]: try later\x00",
        b"AUTH_PENDING,timeout 99999999999\x00INFO_PRE,WEB_AUTH::https://x\x00",
        b"RESTART,[N]server restarting\x00HALT,bye\x00RELAY\x00INFO,caf\xc3\xa9\x00",
        b"PUSH_REPLY,ping 10\r\n\x00AUTH_FAILED\x00EXIT\x00",
    ]
    return Target("control", seeds, run)


def compressed_target() -> Target:
    """Decrypted data-channel payloads under each framing, decompression allowed: a payload
    within the limit or the engine's DecodeError, never a library exception."""
    from miragevpn.compression import Decompression, framing
    from miragevpn.config.model import Compression

    limit = 1632
    unframes = [framing(kind, Decompression(limit))[1] for kind in Compression]

    def run(data: bytes) -> bool:
        accepted = False
        for unframe in unframes:
            try:
                out = unframe(data)
            except MirageVPNError:
                continue
            if len(out) > max(limit, len(data)):
                raise AssertionError(f"{len(out)} bytes out of {len(data)}: over the limit")
            accepted = True
        return accepted

    import lz4.block
    import lzo

    packet = bytes.fromhex("4500057c00004000400100000a0800010a080002") + bytes(1380)
    block = lz4.block.compress(packet, store_size=False)
    seeds = [
        b"\x50\x01" + block,
        b"\x69" + block[1:] + block[:1],
        b"\x66" + lzo.compress(packet, 1, False),
        b"\x66" + lzo.compress(packet * 50, 1, False),  # a bomb
        b"\xfa\x45abc",
        b"\x50\x00\x50abc",
    ]
    return Target("compressed", seeds, run)


TARGETS: dict[str, Callable[[], Target]] = {
    "config": config_target,
    "pushed": pushed_target,
    "control": control_target,
    "compressed": compressed_target,
}


def report(findings: list[Finding]) -> None:
    FINDINGS.mkdir(exist_ok=True)
    for f in findings:
        digest = hashlib.sha256(f.data).hexdigest()[:12]
        path = FINDINGS / f"{f.target}-{digest}.bin"
        path.write_bytes(f.data)
        print(f"FINDING [{f.target}] {f.kind} at {f.where}: {f.message!r}")
        print(f"  input ({len(f.data)} bytes, saved to {path}): {f.data[:200]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="total run time")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    parser.add_argument("--target", choices=sorted(TARGETS), action="append")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else time.time_ns() % 2**32
    targets = [TARGETS[name]() for name in args.target or TARGETS]
    print(f"fuzzing {', '.join(t.name for t in targets)} for {args.seconds:g} s (seed {seed})")
    findings = fuzz(targets, args.seconds, seed)
    for t in targets:
        print(f"  {t.name}: {t.runs} inputs, pool of {len(t.pool)} accepted ones")
    report(findings)
    print(f"{len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
