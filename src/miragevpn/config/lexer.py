"""OpenVPN's lexical rules: config text → directives with line/column, inline `<blocks>`.

The rules follow `parse_line`, `check_inline_file` and `read_config_file` in OpenVPN 2.6's
src/openvpn/options.c:

- a line is split into whitespace-separated tokens; `#` or `;` at the start of a token begins a
  comment that runs to the end of the line;
- `"double quotes"` group a token and allow `\\` escapes; `'single quotes'` are literal;
- outside single quotes a backslash may only escape `\\`, `"` or whitespace (OpenVPN warns and
  drops the line otherwise; we reject it);
- a leading `--` on the option name is dropped (`--remote` = `remote`), as on the command line;
- a line holding only `<name>` opens an inline block that runs to the first line whose text,
  after leading whitespace, starts with `</name>`;
- a UTF-8 byte order mark at the very start is skipped.

We also accept CRLF and mixed line endings and a missing final newline, and reject a NUL byte
with the line where it occurs. Bytes that are not UTF-8 (a Latin-1 name in a comment, as
editors on other systems write them) are accepted inside comments, where OpenVPN never looks
at them, and read as U+FFFD; anywhere else they are an error at their line and column.

Limits, so that a hostile profile costs little: the text is at most `MAX_CONFIG_BYTES`, a line
has at most `MAX_TOKENS_PER_LINE` tokens (OpenVPN's MAX_PARMS) and a config at most
`MAX_DIRECTIVES` directives; lexing is one pass over the text.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

BOM = "\ufeff"
_WHITESPACE = " \t\r\v\f"

# Real client profiles are a few KiB (up to ~250 KiB with a whole CA bundle inline) and a few
# dozen directives; these limits are far above that and far below what hurts.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_DIRECTIVES = 4096  # in the whole config, <connection> bodies included
MAX_TOKENS_PER_LINE = 16  # options.h MAX_PARMS


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    line: int
    column: int  # 1-based


@dataclass(frozen=True, slots=True)
class Directive:
    """One option: its name, its arguments and, for `<name>` blocks, the block's text."""

    name: str
    args: tuple[Token, ...]
    line: int
    column: int
    inline: str | None = None  # the text between <name> and </name>, lines ending in "\n"
    end_line: int | None = None  # the line of </name>

    @property
    def argv(self) -> tuple[str, ...]:
        return tuple(token.text for token in self.args)

    def where(self, arg: int | None = None) -> tuple[int, int]:
        """(line, column) of argument `arg` (0-based), or of the directive name."""
        if arg is not None and arg < len(self.args):
            return self.args[arg].line, self.args[arg].column
        return self.line, self.column


def decode_config(data: str | bytes) -> str:
    """The config as text; a NUL byte or invalid UTF-8 is a `ConfigError` at its line."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"the config is larger than {MAX_CONFIG_BYTES} bytes; a client config is far smaller"
        )
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = _decode_lines(data)
    else:
        text = data
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        column = nul - (text.rfind("\n", 0, nul) + 1) + 1
        raise ConfigError(
            "a NUL byte in the config (is this a binary file?)", line=line, column=column
        )
    if text.startswith(BOM):
        text = text[1:]
    return text


def _decode_lines(data: bytes) -> str:
    """Decode line by line: bytes that are not UTF-8 are allowed only inside a comment."""
    lines = data.split(b"\n")
    out: list[str] = []
    for number, raw in enumerate(lines, 1):
        try:
            out.append(raw.decode("utf-8"))
            continue
        except UnicodeDecodeError as exc:
            bad = exc.start
        valid = raw[:bad].decode("utf-8")  # everything before the first bad byte decodes
        comment = comment_start(valid)
        if comment is None:
            raise ConfigError(
                "a byte that is not UTF-8 text outside a comment (save the file as UTF-8)",
                line=number,
                column=len(valid) + 1,
            )
        out.append(raw.decode("utf-8", "replace"))
    return "\n".join(out)


def comment_start(text: str) -> int | None:
    """Where a comment begins on this line (a `#` or `;` starting a word), by the quoting
    rules of `split_line`; None if it has none (an unclosed quotation has none)."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WHITESPACE:
            i += 1
        elif c in "#;":
            return i
        elif c in "'\"":
            i = _closing_quote(text, i)
            if i < 0:
                return None
        else:
            while i < n and text[i] not in _WHITESPACE:
                i += 2 if text[i] == "\\" else 1
    return None


def _closing_quote(text: str, start: int) -> int:
    """The index after the quotation that opens at `start`, or -1 if it is not closed."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        if text[i] == "\\" and quote == '"':
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    return -1


def split_line(text: str, line: int) -> list[Token]:
    """The tokens of one line (OpenVPN `parse_line`); no tokens for blank and comment lines."""
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in _WHITESPACE or c == "\n":
            i += 1
            continue
        if c in "#;":
            break
        if len(tokens) == MAX_TOKENS_PER_LINE:
            raise ConfigError(
                f"more than {MAX_TOKENS_PER_LINE} words on one line (OpenVPN's limit)",
                line=line,
                column=i + 1,
            )
        start = i
        chars: list[str] = []
        if c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ConfigError("no closing single quotation (')", line=line, column=start + 1)
            chars.append(text[i + 1 : end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise ConfigError('no closing quotation (")', line=line, column=start + 1)
                c = text[i]
                if c == "\\":
                    i = _escape(text, i, line, chars)
                    continue
                if c == '"':
                    i += 1
                    break
                chars.append(c)
                i += 1
        else:
            while i < n:
                c = text[i]
                if c == "\\":
                    i = _escape(text, i, line, chars)
                    continue
                if c in _WHITESPACE:
                    break
                chars.append(c)
                i += 1
        tokens.append(Token("".join(chars), line, start + 1))
    return tokens


def _escape(text: str, i: int, line: int, out: list[str]) -> int:
    """Handle the backslash at `text[i]`; return the index after the escaped character."""
    nxt = text[i + 1] if i + 1 < len(text) else ""
    if nxt == "\\" or nxt == '"' or (nxt != "" and nxt in _WHITESPACE):
        out.append(nxt)
        return i + 2
    raise ConfigError(
        "bad backslash ('\\') usage: a backslash may only escape '\\', '\"' or a space; "
        'write Windows paths with double backslashes ("c:\\\\dir\\\\file")',
        line=line,
        column=i + 1,
    )


def lex(text: str, *, first_line: int = 1, max_directives: int = MAX_DIRECTIVES) -> list[Directive]:
    """Every directive of `text` (already decoded), with inline blocks attached.

    `first_line` numbers the lines of a nested text (a `<connection>` block's body);
    `max_directives` is how many more the config may hold.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start another line
    directives: list[Directive] = []
    index = 0
    while index < len(lines):
        number = first_line + index
        tokens = split_line(lines[index], number)
        index += 1
        if not tokens:
            continue
        if len(directives) == max_directives:
            raise ConfigError(
                f"more than {MAX_DIRECTIVES} directives; a client config needs far fewer",
                line=number,
                column=tokens[0].column,
            )
        name_token = tokens[0]
        name = name_token.text
        if len(name) >= 3 and name.startswith("--"):
            name = name[2:]
        if len(tokens) == 1 and len(name) > 2 and name.startswith("<") and name.endswith(">"):
            tag = name[1:-1]
            close = f"</{tag}>"
            body: list[str] = []
            end_line: int | None = None
            while index < len(lines):
                raw = lines[index]
                index += 1
                if raw.lstrip(_WHITESPACE).startswith(close):
                    end_line = first_line + index - 1
                    break
                body.append(raw.rstrip("\r") + "\n")
            if end_line is None:
                raise ConfigError(
                    f"<{tag}> block is not closed: {close} missing",
                    line=number,
                    column=name_token.column,
                    directive=tag,
                )
            directives.append(
                Directive(
                    tag, (), number, name_token.column, inline="".join(body), end_line=end_line
                )
            )
            continue
        directives.append(Directive(name, tuple(tokens[1:]), number, name_token.column))
    return directives
