"""What a directive handler sees: the directive, a way to read its file, and where to put values.

Handlers never build the `Config`; they record `Setting`s (a model slot or an intermediate key
with its value and line). `resolve.py` is the one place that turns the settings into a model:
duplicates, conflicts and cross-directive checks live there.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ConfigError
from .lexer import Directive, Token
from .model import ConfigWarning, IgnoredDirective

ReadFile = Callable[[str], bytes]

INLINE_MARKER = "[inline]"  # `ca [inline]`: the content is the <ca> block of this file
# A key, certificate bundle or credentials file larger than this is a mistake or an attack
# (Debian's whole CA bundle is ~220 KiB). The runtime's reader stops reading here too.
MAX_FILE_BYTES = 1024 * 1024


class Outcome(enum.Enum):
    USED = "used"  # it has an effect here
    DEPRECATED = "deprecated"  # OpenVPN 2.6 warns; mapped to its modern meaning or ignored
    IGNORED = "ignored"  # accepted without effect here (logging, scripts, platform specifics)
    REJECTED = "rejected"  # an error, with a reason


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    value: object
    line: int
    column: int
    directive: str
    connection: int | None = None  # index of the <connection> block it came from


@dataclass(slots=True)
class Context:
    read_file: ReadFile
    inline_blocks: dict[str, Directive] = field(default_factory=dict)
    settings: list[Setting] = field(default_factory=list)
    ignored: list[IgnoredDirective] = field(default_factory=list)
    warnings: list[ConfigWarning] = field(default_factory=list)
    ignore_unknown: set[str] = field(default_factory=set)
    connection: int | None = None  # set while handling the body of a <connection> block
    directives_left: int = 0  # how many more directives <connection> bodies may add

    def put(self, d: Directive, key: str, value: object) -> None:
        self.settings.append(Setting(key, value, d.line, d.column, d.name, self.connection))

    def warn(self, d: Directive, message: str) -> None:
        self.warnings.append(ConfigWarning(d.name, d.line, message))

    def warn_setting(self, s: Setting, message: str) -> None:
        self.warnings.append(ConfigWarning(s.directive, s.line, message))

    def ignore(self, d: Directive, reason: str) -> None:
        self.ignored.append(IgnoredDirective(d.name, d.line, reason))

    def material(self, d: Directive, what: str) -> tuple[bytes, bool, tuple[Token, ...]]:
        """The content a file-taking directive names: (bytes, inline?, the remaining args).

        Three forms: a `<name>` block; `name [inline] args` with a `<name>` block elsewhere
        in the file; `name FILE args`, read through `read_file`.
        """
        if d.inline is not None:
            return d.inline.encode(), True, d.args
        if not d.args:
            raise error(d, f"needs a file name or an inline <{d.name}> block")
        first = d.args[0]
        if first.text == INLINE_MARKER:
            block = self.inline_blocks.get(d.name)
            if block is None or block.inline is None:
                raise error(d, f"says {INLINE_MARKER} but the file has no <{d.name}> block", 0)
            return block.inline.encode(), True, d.args[1:]
        if first.text == "":
            raise error(d, f"the {what} file name is empty", 0)
        try:
            data = self.read_file(first.text)
        except ConfigError as exc:
            raise error(d, f"cannot read {what} '{first.text}': {exc.message}", 0) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise error(d, f"cannot read {what} '{first.text}': {reason}", 0) from None
        if len(data) > MAX_FILE_BYTES:
            message = f"{what} '{first.text}' is larger than {MAX_FILE_BYTES} bytes"
            raise error(d, message, 0)
        return data, False, d.args[1:]


Handler = Callable[["Context", Directive], None]


def error(d: Directive, message: str, arg: int | None = None) -> ConfigError:
    line, column = d.where(arg)
    return ConfigError(message, line=line, column=column, directive=d.name)


def key_error(d: Directive, exc: Exception) -> ConfigError:
    """A `KeyMaterialError` (plain words) at the directive's first argument."""
    return error(d, str(exc), 0 if d.args else None)


def bad_arg(d: Directive, arg: int, message: str) -> ConfigError:
    return error(d, f"'{d.args[arg].text}': {message}", arg)
