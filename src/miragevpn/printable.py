"""Text from a profile or a peer, made safe to show: every control character escaped.

A profile's values, a server's AUTH_FAILED reason, a proxy's status line and a pushed option
can all hold terminal control sequences (ESC [ ..., a bell, a Unicode right-to-left override
that makes "exe.pdf" read "fdp.exe"). Everything we print, log or hand to a desktop
notification passes through `printable` first; `--json` output is escaped by JSON itself.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the Unicode format characters that reorder or hide text.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def printable(text: str) -> str:
    """`text` with every control character written as an escape (`\\x1b`, `\\u202e`)."""

    def escape(m: re.Match[str]) -> str:
        code = ord(m.group(0))
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(escape, text)
