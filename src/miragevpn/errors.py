"""The one error hierarchy of the engine, and why a packet was dropped.

Every error says whose fault it was and what happens next:

    ConfigError                 the local configuration (or a pushed option) cannot be used
    DecodeError                 a peer's bytes that do not parse: the packet is dropped and counted
      AuthenticationError       a packet whose HMAC / AEAD tag does not verify: dropped, counted
      ReplayError               a packet seen before (or too old): dropped, counted
    ProtocolError
      LocalProtocolError        we (the caller of the engine) broke a rule
      RemoteProtocolError       the server broke a rule that ends the session
        TlsAlertReceived        the server refused our TLS session (e.g. our certificate)
    ServerCertificateRejected   WE refused the server's certificate (our CA, EKU, name checks)
    AuthFailed                  the server refused our credentials (AUTH_FAILED[,TEMP], reason)
    ProxyError                  the proxy between us and the server (http-proxy, socks-proxy):
      ProxyRefused              it answered but will not connect us (HTTP status, SOCKS reply)
      ProxyAuthFailed           it wants credentials, or refused ours (HTTP 407, RFC 1929)
      ProxyProtocolError        its answer is not HTTP / SOCKS5 as the RFCs say

A peer's malformed packet never escapes as a stray `struct.error` or `IndexError`. A dropped
packet is counted in the client's statistics under a `DropReason`.
"""

from __future__ import annotations

import enum


class MirageVPNError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(MirageVPNError):
    """A configuration file (or pushed option) we cannot use, with where it was found."""

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        directive: str | None = None,
        file: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.directive = directive
        self.file = file

    def with_file(self, file: str) -> ConfigError:
        """The same error, located in `file` (the parser itself does not know file names)."""
        return ConfigError(
            self.message, line=self.line, column=self.column, directive=self.directive, file=file
        )

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        prefix = f"{self.directive}: " if self.directive else ""
        return f"{where}: {prefix}{self.message}"


class DecodeError(MirageVPNError):
    """Bytes from the network that do not parse (truncated, bad length, unknown opcode...).
    On TCP such a packet ends the session (the stream may be out of step) unless
    `fatal_on_tcp` is false."""

    fatal_on_tcp = True


class AuthenticationError(DecodeError):
    """A packet whose HMAC (tls-auth), tls-crypt tag or AEAD tag does not verify: forged,
    corrupted, or sealed with another key. Dropped and counted, never fatal on its own. (Not a
    certificate: `ServerCertificateRejected`; not the server's verdict: `AuthFailed`.)"""


class ReplayError(DecodeError):
    """A packet whose replay id was already seen, is too old, or is zero."""


class CompressionError(DecodeError):
    """An authenticated data packet whose compression we do not undo. Dropped and counted;
    the packet was whole, so a TCP session goes on (unlike other DecodeErrors there)."""

    fatal_on_tcp = False


class CompressionRefused(CompressionError):
    """Compressed although the negotiated framing or allow-compression does not let us
    decompress it, or the library for its algorithm is not installed."""


class DecompressionFailed(CompressionError):
    """Compressed data that is corrupt or decompresses beyond the payload limit (a bomb)."""


class ProtocolError(MirageVPNError):
    """A protocol rule was broken; subclasses say by whom."""


class LocalProtocolError(ProtocolError):
    """We (the caller of the engine) broke a rule: e.g. sent data before the tunnel was up."""


class RemoteProtocolError(ProtocolError):
    """The peer broke a rule that ends the session (not just one bad packet)."""


class TlsAlertReceived(RemoteProtocolError):
    """The server ended the TLS session with an alert; the message says what it means in plain
    words (e.g. "the server rejected our certificate (TLS alert: unknown CA)")."""

    def __init__(self, message: str, *, alert: str) -> None:
        super().__init__(message)
        self.alert = alert  # OpenSSL's words for the alert, e.g. "unknown ca"


class ServerCertificateRejected(MirageVPNError):
    """We refused the server's certificate (not signed by the configured CA, wrong EKU or
    name, expired...). The fault is the server's certificate or our configuration; the server
    did not refuse anything."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"we rejected the server's certificate: {reason}")
        self.reason = reason


class AuthFailed(MirageVPNError):
    """The server refused our credentials: its `AUTH_FAILED[,reason]` control message.
    `temporary` for `AUTH_FAILED,TEMP[...]` (the server asks us to try again later)."""

    def __init__(self, reason: str, *, temporary: bool = False) -> None:
        said = f"AUTH_FAILED,{reason}" if reason else "AUTH_FAILED without a reason"
        refused = "the server refused our credentials"
        if temporary:
            message = f"temporary authentication failure: {refused} for now ({said})"
        else:
            message = f"authentication failed: {refused} ({said})"
        super().__init__(message)
        self.reason = reason
        self.temporary = temporary


class DropReason(enum.Enum):
    """Why the client dropped a packet: the key of `Stats.dropped`. `.value` is the phrase a
    log or status page shows."""

    NO_SESSION = "no session"  # a packet while no session is open (waiting, resolving...)
    EMPTY = "empty"
    MALFORMED = "malformed"  # DecodeError: truncated, bad length, unknown opcode
    FAILED_AUTHENTICATION = "failed authentication"  # AuthenticationError
    REPLAYED = "replayed"  # ReplayError
    DATA_BEFORE_KEYS = "data before keys"
    UNKNOWN_KEY_ID = "unknown key id"
    FOREIGN_SESSION_ID = "foreign session id"  # not the server session we talk to
    BAD_REMOTE_SESSION_ID = "bad remote session id"  # acks addressed to another session of ours
    DUPLICATE_CONTROL = "duplicate control packet"  # received before: acked again
    BEYOND_RECEIVE_WINDOW = "control packet beyond the receive window"  # not acked
    OCC_MESSAGE = "occ message"  # an OCC message a pull client does not use
    COMPRESSION_REFUSED = "compressed, not decompressed"  # CompressionRefused
    DECOMPRESSION_FAILED = "corrupt or oversized compressed data"  # DecompressionFailed

    @classmethod
    def of(cls, error: DecodeError) -> DropReason:
        """The reason for a packet that raised `error` while being decoded."""
        if isinstance(error, AuthenticationError):
            return cls.FAILED_AUTHENTICATION
        if isinstance(error, ReplayError):
            return cls.REPLAYED
        if isinstance(error, CompressionRefused):
            return cls.COMPRESSION_REFUSED
        if isinstance(error, DecompressionFailed):
            return cls.DECOMPRESSION_FAILED
        return cls.MALFORMED


class ProxyError(MirageVPNError):
    """The proxy on the way to the server failed the handshake; the message says how."""


class ProxyRefused(ProxyError):
    """The proxy answered but will not connect us to the server."""


class ProxyAuthFailed(ProxyError):
    """The proxy asks for credentials we did not give, or refused the ones we gave."""


class ProxyProtocolError(ProxyError):
    """The proxy's answer does not follow HTTP / SOCKS5: not a proxy of that kind, or broken."""
