"""Asking for a one-time code on the terminal, without blocking the event loop.

The unix client's `answer_challenge` hook. The terminal is the one on standard input (as the
username/password prompt in cli.py); a second descriptor of it is opened non-blocking and read
with the event loop, so that a signal (or the session ending) while the question is open
cancels the read, and the terminal's echo setting is always put back. Without a terminal:
`CannotAsk` (the session ends with that reason, miragevpn-client exits 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios

from miragevpn.events import ChallengeRequested
from miragevpn.printable import printable

from .hooks import CannotAsk

MAX_ANSWER = 1024  # bytes of one line; OpenVPN's USER_PASS_LEN is smaller


def prompt_for(challenge: ChallengeRequested) -> str:
    """The question as the terminal shows it (OpenVPN says "CHALLENGE: <text>"), control
    characters escaped (a static-challenge text comes from the profile)."""
    return f"CHALLENGE: {printable(challenge.text)} "


async def ask_on_terminal(challenge: ChallengeRequested) -> str:
    """The line the user types (echoed only if the challenge allows), without its newline."""
    if not sys.stdin.isatty():
        who = "the server" if challenge.dynamic else "the profile (static-challenge)"
        raise CannotAsk(
            f"{who} asks for a one-time code ({challenge.text!r}) and standard input is not "
            "a terminal to ask on"
        )
    fd = os.open(os.ttyname(sys.stdin.fileno()), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        saved = termios.tcgetattr(fd)
        if not challenge.echo:
            quiet = termios.tcgetattr(fd)
            quiet[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
        try:
            os.write(fd, prompt_for(challenge).encode("utf-8", "replace"))
            line = await _read_line(fd)
        finally:
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
            if not challenge.echo:
                with contextlib.suppress(OSError):
                    os.write(fd, b"\n")
    finally:
        os.close(fd)
    return line.decode("utf-8", "replace")


async def _read_line(fd: int) -> bytes:
    """One line from the (canonical mode) terminal; CannotAsk at end of file."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    while b"\n" not in data:
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        try:
            chunk = os.read(fd, MAX_ANSWER)
        except BlockingIOError:
            continue
        if not chunk:
            raise CannotAsk("the terminal was closed before a one-time code was given")
        data += chunk
        if len(data) > MAX_ANSWER:
            raise CannotAsk(f"the answer is longer than {MAX_ANSWER} bytes")
    return bytes(data[: data.index(b"\n")]).rstrip(b"\r")


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
