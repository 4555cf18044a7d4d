"""`parse_config`: config text → `Config`, asking the caller for every referenced file.

The pipeline: decode (UTF-8, no NUL) → lex (tokens, inline blocks) → one handler per directive
(the table in directives.py decides used / deprecated / ignored / rejected) → resolve.py
(duplicates, conflicts, defaults, "is this a usable client config").
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .context import INLINE_MARKER, Context, Outcome, ReadFile, error
from .directives import TABLE, Spec
from .lexer import MAX_DIRECTIVES, Directive, decode_config, lex
from .model import Config
from .resolve import resolve

IGNORE_UNKNOWN = "ignore-unknown-option"
NOT_FILES = frozenset({"peer-fingerprint"})  # inline-capable, but its argument is the value
# directives whose file (a proxy's credentials) is a later argument, and the words there
# that are not file names (proxies.py)
FILE_AT_ARG = {"http-proxy": 2, "socks-proxy": 2}
NOT_A_FILE_NAME = frozenset({INLINE_MARKER, "", "auto", "auto-nct", "stdin"})


def parse_config(text: str | bytes, *, read_file: ReadFile) -> Config:
    """Parse an OpenVPN client config.

    `read_file(path_as_written)` returns a referenced file's bytes (the caller resolves relative
    paths against the config file's directory) and may raise `OSError` or `ConfigError`.
    Raises `ConfigError` with line, column and directive for anything we cannot use.
    """
    directives = lex(decode_config(text))
    ctx = Context(read_file, directives_left=MAX_DIRECTIVES - len(directives))
    marked = {
        d.name
        for d in directives
        if d.inline is None and any(arg.text == INLINE_MARKER for arg in d.args)
    }
    for d in directives:
        if d.inline is not None and d.name in marked:
            ctx.inline_blocks.setdefault(d.name, d)
    consumed = {id(block) for block in ctx.inline_blocks.values()}
    replaced = superseded_by_blocks(directives)
    connections = 0
    for d in directives:
        if id(d) in consumed:
            continue
        if (block := replaced.get(id(d))) is not None:
            why = f"replaced by the <{d.name}> block at line {block.line} (the later one wins)"
            ctx.ignore(d, f"{why}; its file is not read")
            ctx.warn(d, f"{why}, as in OpenVPN; the file it names is not read")
            continue
        if d.name == "connection":
            _connection(ctx, d, connections)
            connections += 1
            continue
        handle(ctx, d)
    return resolve(ctx)


def _names_a_file(d: Directive) -> bool:
    """`ca ca.crt` (not `ca [inline]`, not a block); `auth-user-pass` alone (a prompt)."""
    spec = TABLE.get(d.name)
    if spec is None or not spec.inline or d.inline is not None or d.name in NOT_FILES:
        return False
    if d.name in FILE_AT_ARG:
        return False  # `socks-proxy H P [inline]` is the only way its block is used
    return not d.args or d.args[0].text != INLINE_MARKER


def superseded_by_blocks(directives: list[Directive]) -> dict[int, Directive]:
    """File directives followed later by an inline block of the same name, by id(): the block
    wins, as in OpenVPN, where each occurrence overrides the previous one; the file is never
    read."""
    last_block: dict[str, Directive] = {}
    for d in directives:
        if d.inline is not None:
            last_block[d.name] = d
    replaced: dict[int, Directive] = {}
    for d in directives:
        block = last_block.get(d.name)
        if block is not None and block.line > d.line and _names_a_file(d):
            replaced[id(d)] = block
    return replaced


def _connection(ctx: Context, d: Directive, index: int) -> None:
    if d.inline is None:
        raise error(d, "connection settings are given as a <connection> ... </connection> block")
    ctx.connection = index
    try:
        body = lex(d.inline, first_line=d.line + 1, max_directives=ctx.directives_left)
        ctx.directives_left -= len(body)
        for sub in body:
            spec = TABLE.get(sub.name)
            # OpenVPN allows its connection options (options.c, OPT_P_CONNECTION) there; an
            # unknown or refused option gets its own message; ignored ones stay ignored
            if (
                spec is not None
                and not spec.in_connection
                and spec.outcome not in (Outcome.IGNORED, Outcome.REJECTED)
            ):
                raise error(
                    sub,
                    f"'{sub.name}' is not allowed inside a <connection> block (OpenVPN allows "
                    "only connection options there); put it outside the blocks",
                )
            handle(ctx, sub)
        if not any(sub.name == "remote" for sub in body):
            raise error(d, "each <connection> block must contain exactly one 'remote'")
    finally:
        ctx.connection = None


def handle(ctx: Context, d: Directive, *, optional: bool = False) -> None:
    """Run one directive. `optional`: from `setenv opt`, where OpenVPN downgrades errors."""
    if d.name == "setenv" and d.args and d.args[0].text == "opt" and d.inline is None:
        if len(d.args) < 2:
            raise error(d, "'setenv opt' needs an option after it")
        inner = d.args[1]
        name = (
            inner.text[2:] if inner.text.startswith("--") and len(inner.text) >= 3 else inner.text
        )
        handle(ctx, Directive(name, d.args[2:], inner.line, inner.column), optional=True)
        return
    if d.name == IGNORE_UNKNOWN:
        if not d.args:
            raise error(d, "needs at least one option name")
        for token in d.args:
            ctx.ignore_unknown.add(token.text[2:] if token.text.startswith("--") else token.text)
        ctx.ignore(d, "applies to the lines after it")
        return
    spec = TABLE.get(d.name)
    if spec is None:
        if optional or d.name in ctx.ignore_unknown:
            why = "setenv opt" if optional else IGNORE_UNKNOWN
            ctx.ignore(d, f"unknown option, ignored as the config asks ({why})")
            ctx.warn(d, f"unknown option '{d.name}' ignored ({why})")
            return
        if d.inline is not None:
            raise error(d, f"unknown inline block <{d.name}>")
        raise error(d, f"unknown option '{d.name}'")
    try:
        _run(ctx, d, spec)
    except ConfigError as exc:
        if not optional:
            raise
        ctx.ignore(d, f"not usable here, ignored as the config asks (setenv opt): {exc.message}")
        ctx.warn(d, f"ignored (setenv opt): {exc.message}")


def _run(ctx: Context, d: Directive, spec: Spec) -> None:
    if spec.outcome is Outcome.REJECTED:
        raise error(d, f"not supported here: {spec.reason}")
    n = len(d.args)
    if d.inline is not None:
        if not spec.inline:
            raise error(d, f"'{d.name}' cannot be given as an inline <{d.name}> block")
    elif spec.inline and n == 0 and d.name != "auth-user-pass":
        raise error(d, f"needs a file name or an inline <{d.name}> block")
    elif not spec.min_args <= n <= spec.max_args:
        if spec.min_args == spec.max_args:
            expected = f"{spec.min_args} argument{'s' if spec.min_args != 1 else ''}"
        else:
            expected = f"{spec.min_args} to {spec.max_args} arguments"
        raise error(d, f"expects {expected}, got {n}", spec.max_args if n > spec.max_args else None)
    if spec.outcome is Outcome.IGNORED:
        ctx.ignore(d, spec.reason)
        return
    if spec.outcome is Outcome.DEPRECATED and spec.handler is None:
        ctx.warn(d, f"deprecated (OpenVPN 2.6 warns): {spec.reason}")
        ctx.ignore(d, f"deprecated: {spec.reason}")
        return
    assert spec.handler is not None
    spec.handler(ctx, d)


@dataclass(frozen=True, slots=True)
class FileReference:
    """A file a config names: `ca ca.crt` is ("ca", "ca.crt", its line)."""

    directive: str
    name: str
    line: int


def file_references(text: str | bytes) -> tuple[FileReference, ...]:
    """The files `text` names, without reading them (`ConfigError` if it does not lex)."""
    refs: list[FileReference] = []
    directives = lex(decode_config(text))
    replaced = superseded_by_blocks(directives)
    for d in directives:
        if id(d) in replaced:
            continue
        name, args = d.name, d.args
        if name == "setenv" and len(args) >= 2 and args[0].text == "opt":
            inner = args[1].text
            name = inner[2:] if inner.startswith("--") and len(inner) >= 3 else inner
            args = args[2:]
        spec = TABLE.get(name)
        if name in FILE_AT_ARG and d.inline is None:
            at = FILE_AT_ARG[name]
            if len(args) > at and args[at].text not in NOT_A_FILE_NAME:
                refs.append(FileReference(name, args[at].text, d.line))
            continue
        if spec is None or not spec.inline or d.inline is not None or not args:
            continue
        if name in NOT_FILES:
            continue
        if args[0].text not in (INLINE_MARKER, ""):
            refs.append(FileReference(name, args[0].text, d.line))
    return tuple(refs)
