"""The one error hierarchy of the engine.

Every error says whose fault it was: the local configuration, the remote peer, or our own use of
the API. A peer's malformed packet raises a `DecodeError` (or a subclass) inside the engine, which
the engine turns into "drop and count" or a session-ending event; it never escapes as a stray
`struct.error` or `IndexError`.
"""

from __future__ import annotations


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
    """Bytes from the network that do not parse (truncated, bad length, unknown opcode...)."""


class AuthenticationError(DecodeError):
    """A packet whose HMAC or AEAD tag does not verify, or a peer certificate we reject."""


class ReplayError(DecodeError):
    """A packet whose replay id was already seen, is too old, or is zero."""


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
