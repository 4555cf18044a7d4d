"""Control-channel text messages: NUL framing, classification, PUSH_REPLY reassembly.

OpenVPN references: `ssl.c` (`extract_control_message`, CVE-2024-5594 hardening), `push.c`
(`process_incoming_push_msg`, `push-continuation`, `receive_auth_pending`), `common.h`
(`TLS_CHANNEL_BUF_SIZE`). What the options of a PUSH_REPLY mean is push.py's business.

Every size here is bounded: a peer cannot make us hold more than `MAX_MESSAGE` bytes of one
message or `MAX_PUSH_BYTES` of one reassembled PUSH_REPLY (issue 8, finding 3).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DecodeError

# --------------------------------------------------------------------------- framing

# One control message, NUL included. OpenVPN 2.6 reads control text into TLS_CHANNEL_BUF_SIZE
# (2048) buffers and splits PUSH_REPLY into PUSH_BUNDLE_SIZE (1024) parts, so its messages are
# under 2 KiB; 8 KiB leaves room for other servers' longer INFO/AUTH_PENDING texts.
MAX_MESSAGE = 8192
# One PUSH_REPLY, all its `push-continuation` parts together (option text, commas included).
# 256 KiB is ~8,000 `route a.b.c.d m.m.m.m` lines, far beyond any provider's push.
MAX_PUSH_BYTES = 256 * 1024
# AUTH_PENDING may extend the wait for PUSH_REPLY by its `timeout`. OpenVPN caps the extension
# at max(reneg-sec / 2, hand-window) (push.c: receive_auth_pending), 1800 s with the defaults;
# we cap at the same 1800 s whatever the config says, so a hostile first remote cannot pin the
# client for years instead of failing over (issue 8, finding 9).
MAX_AUTH_PENDING_TIMEOUT = 1800.0


def split_control_messages(buffer: bytearray) -> list[str]:
    """Take every complete NUL-terminated message out of `buffer` (the rest stays for later).

    Trailing CR/LF are stripped; messages with non-printable characters are dropped, as
    OpenVPN 2.6.11+ does. Raises `DecodeError` for a message over `MAX_MESSAGE` bytes,
    complete or still without its NUL."""
    messages = []
    while True:
        end = buffer.find(0, 0, MAX_MESSAGE)
        if end < 0:
            break
        raw = bytes(buffer[:end]).rstrip(b"\r\n")
        del buffer[: end + 1]
        if raw and all(0x20 <= byte < 0x7F for byte in raw):
            messages.append(raw.decode("ascii"))
    if len(buffer) >= MAX_MESSAGE:
        buffer.clear()
        raise DecodeError(f"control message longer than {MAX_MESSAGE} bytes")
    return messages


def encode_control_message(text: str) -> bytes:
    """A control message as sent: ASCII, one NUL at the end (written as one TLS record)."""
    return text.encode("ascii") + b"\x00"


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class PushReply:
    options: tuple[str, ...]  # raw option lines, `push-continuation` removed
    more_follows: bool  # `push-continuation 2`: accumulate and wait for the last part


@dataclass(frozen=True, slots=True)
class AuthFailed:
    reason: str  # "" when the server gave none

    @property
    def temporary(self) -> bool:
        return self.reason.startswith("TEMP")


@dataclass(frozen=True, slots=True)
class AuthPending:
    timeout: float | None  # `AUTH_PENDING,timeout N`, at most MAX_AUTH_PENDING_TIMEOUT


@dataclass(frozen=True, slots=True)
class Restart:
    message: str
    flags: frozenset[str]  # "P" keep credentials, "N" advance to the next remote


@dataclass(frozen=True, slots=True)
class Halt:
    message: str
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class Info:
    text: str
    pre: bool  # INFO_PRE


@dataclass(frozen=True, slots=True)
class Exit:
    """The peer is exiting (cc-exit)."""


@dataclass(frozen=True, slots=True)
class Unrecognised:
    text: str


ControlMessage = PushReply | AuthFailed | AuthPending | Restart | Halt | Info | Exit | Unrecognised


def _flags_and_message(rest: str) -> tuple[frozenset[str], str]:
    """`[flags]message` as used by RESTART and HALT (`push.c: parse_signal_flags`)."""
    if rest.startswith("["):
        close = rest.find("]")
        if close > 0:
            return frozenset(rest[1:close]), rest[close + 1 :]
    return frozenset(), rest


def _after(text: str, prefix: str) -> str | None:
    """The text after `prefix` and an optional comma, or None if `text` is another message."""
    if text == prefix:
        return ""
    if text.startswith(prefix + ","):
        return text[len(prefix) + 1 :]
    return None


def parse_control_message(text: str) -> ControlMessage:
    """Classify one control message (already split and checked printable)."""
    if text.startswith("PUSH_REPLY") and text[10:11] in ("", ","):
        return _parse_push_reply(text[11:])
    if (rest := _after(text, "AUTH_FAILED")) is not None:
        return AuthFailed(rest)
    if (rest := _after(text, "AUTH_PENDING")) is not None:
        return AuthPending(_pending_timeout(rest))
    if (rest := _after(text, "RESTART")) is not None:
        flags, message = _flags_and_message(rest)
        return Restart(message, flags)
    if (rest := _after(text, "HALT")) is not None:
        flags, message = _flags_and_message(rest)
        return Halt(message, flags)
    if (rest := _after(text, "INFO_PRE")) is not None:
        return Info(rest, pre=True)
    if (rest := _after(text, "INFO")) is not None:
        return Info(rest, pre=False)
    if text == "EXIT" or text.startswith("EXIT,"):
        return Exit()
    return Unrecognised(text)


def _pending_timeout(rest: str) -> float | None:
    for item in rest.split(","):
        words = item.split()
        if len(words) == 2 and words[0] == "timeout" and words[1].isascii():
            digits = words[1].lstrip("0") or "0"
            if digits.isdigit():  # no int() of thousands of digits: a long number is the cap
                seconds = float(digits) if len(digits) <= 9 else MAX_AUTH_PENDING_TIMEOUT
                return min(seconds, MAX_AUTH_PENDING_TIMEOUT)
    return None


def _parse_push_reply(body: str) -> PushReply:
    lines = [line for line in body.split(",") if line.strip()] if body else []
    more = False
    if lines:
        words = lines[-1].split()
        if len(words) == 2 and words[0] == "push-continuation":
            more = words[1] == "2"
            lines.pop()
    return PushReply(tuple(lines), more)


class PushReplyAssembler:
    """Accumulates `push-continuation 2` parts until the last one (bounded in options and
    bytes: `MAX_OPTIONS`, `MAX_PUSH_BYTES`)."""

    MAX_OPTIONS = 4096

    def __init__(self) -> None:
        self._options: list[str] = []
        self._bytes = 0

    def add(self, part: PushReply) -> tuple[str, ...] | None:
        """The complete option list once the last part arrived, else None."""
        self._options.extend(part.options)
        self._bytes += sum(len(option) + 1 for option in part.options)
        if len(self._options) > self.MAX_OPTIONS or self._bytes > MAX_PUSH_BYTES:
            self._options.clear()
            self._bytes = 0
            raise DecodeError(
                f"PUSH_REPLY continuation exceeds {self.MAX_OPTIONS} options "
                f"or {MAX_PUSH_BYTES} bytes"
            )
        if part.more_follows:
            return None
        options, self._options, self._bytes = tuple(self._options), [], 0
        return options
