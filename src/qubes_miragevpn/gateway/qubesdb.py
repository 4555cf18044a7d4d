"""QubesDB access that survives the binding's pitfalls (see reference/qubesdb-binding.md).

The `qubesdb` extension is easy to misuse: a bad path in `multiread()` aborts the process, a
daemon restart silently drops every watch, and the first non-empty `write()` on a handle whose
daemon restarted hangs the daemon for every client. `QubesDBAdapter` is the only code that
touches the binding, and it keeps these rules:

    validate   every path and value is checked here first (`check_key`, `check_prefix`,
               `check_value`): a bad one is an `InvalidPathError`/`InvalidValueError` raised
               before the binding is called, never an abort, a dropped connection or a hang
    reads      one command handle, opened lazily; a `DisconnectedError` closes it and the call is
               retried once on a new handle
    writes     each `write()` opens a fresh handle and closes it afterwards, so a write never
               goes to a stale handle; an `Error` from it just closes that handle
    watches    a dedicated handle that only ever runs watch/read_watch; `changes()` waits on its
               `watch_fd()` with the asyncio loop and yields `KeyChanged(path)`; when the daemon
               goes away it yields `ConnectionLost`, closes both handles, reconnects with capped
               back-off, registers every watch again and yields `Resynced` (events were lost:
               re-read everything)
    threads    one adapter, one thread: every method checks it runs on the thread that made it

Events are hints, not data: treat `KeyChanged(path)` as "something at or under `path` changed"
and re-read. Events that arrive while a command runs on the watch handle are queued inside the
library where the fd cannot show them; they come out later, so after every (re)registration the
consumer re-reads (that is what `Resynced` asks for).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

MAX_PATH = 63  # QDB_MAX_PATH is 64 including the NUL (include/qubesdb.h)
MAX_VALUE = 3071  # QDB_MAX_DATA is 3072, but the largest value the daemon stores is 3071 (measured)
_PATH = re.compile(r"/[A-Za-z0-9_.:@/-]*")  # what the daemon accepts (daemon/db-daemon.c)
T = TypeVar("T")
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)  # seconds between reconnect attempts; the last repeats


class QubesDBError(Exception):
    """Base of this module's errors."""


class InvalidPathError(QubesDBError, ValueError):
    """The caller gave a path QubesDB cannot hold (our bug or bad input, never the daemon's)."""


class InvalidValueError(QubesDBError, ValueError):
    """The caller gave a value QubesDB cannot hold: too long, or with a NUL byte."""


class QubesDBUnavailable(QubesDBError):
    """The QubesDB daemon cannot be reached (not running, restarting, or the module is missing)."""


class QubesDBRefused(QubesDBError):
    """The daemon answered a valid-looking request with an error (e.g. a read-only socket)."""


def _check(path: object, what: str) -> str:
    if not isinstance(path, str):
        raise InvalidPathError(f"QubesDB {what} must be a str, not {type(path).__name__}")
    if not path.startswith("/"):
        raise InvalidPathError(f"QubesDB {what} {path!r} does not start with '/'")
    if len(path) > MAX_PATH:
        raise InvalidPathError(f"QubesDB {what} {path!r} is longer than {MAX_PATH} characters")
    if not _PATH.fullmatch(path):
        raise InvalidPathError(f"QubesDB {what} {path!r} has a character outside [A-Za-z0-9_.:@/-]")
    return path


def check_key(path: object) -> str:
    """A path naming one key (read, write): valid characters and length, no trailing '/'."""
    key = _check(path, "key")
    if key.endswith("/"):
        raise InvalidPathError(f"QubesDB key {key!r} ends with '/' (that names a subtree)")
    return key


def check_prefix(path: object) -> str:
    """A path used as a prefix or subtree (list, multiread, rm, watch): may end with '/'."""
    return _check(path, "path")


def check_value(value: object) -> bytes:
    """A value as QubesDB stores it: `str` becomes UTF-8; at most 3071 bytes; no NUL byte."""
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, bytes):
        data = value
    else:
        raise InvalidValueError(f"QubesDB values are str or bytes, not {type(value).__name__}")
    if len(data) > MAX_VALUE:
        raise InvalidValueError(f"QubesDB value of {len(data)} bytes exceeds {MAX_VALUE} bytes")
    if b"\0" in data:
        raise InvalidValueError("QubesDB values cannot contain a NUL byte")
    return data


class RawHandle(Protocol):
    """One `qubesdb.QubesDB` handle: the binding's methods this module uses.

    A failed call raises `Error`, except that it returns None when the thread's errno happens
    to hold ENOENT (the binding mistakes that for "no such key"): `list` and `multiread` then
    return None instead of a list or dict.
    """

    def read(self, path: str) -> bytes | None: ...
    def write(self, path: str, value: bytes) -> None: ...
    def rm(self, path: str) -> None: ...
    def list(self, prefix: str) -> list[str] | None: ...
    def multiread(self, prefix: str) -> dict[str, bytes] | None: ...
    def watch(self, path: str) -> None: ...
    def read_watch(self) -> str: ...
    def watch_fd(self) -> int: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Binding:
    """The binding as three parts: how to open a handle, and its two exception classes."""

    connect: Callable[[], RawHandle]  # `qubesdb.QubesDB` called with NO argument (None raises)
    error: type[Exception]  # qubesdb.Error
    disconnected: type[Exception]  # qubesdb.DisconnectedError, a subclass of `error`

    @classmethod
    def from_module(cls, module: Any) -> Binding:
        handle_class = module.QubesDB

        def connect() -> RawHandle:
            handle: RawHandle = handle_class()
            return handle

        return cls(connect=connect, error=module.Error, disconnected=module.DisconnectedError)


def load_binding() -> Binding:
    """The real binding (`python3-qubesdb`, only packaged by Qubes)."""
    try:
        module = importlib.import_module("qubesdb")
    except ImportError as exc:
        raise QubesDBUnavailable(
            "the qubesdb Python module is not installed (package python3-qubesdb, part of "
            "Qubes); outside Qubes give the network facts with --qubesdb-file"
        ) from exc
    return Binding.from_module(module)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyChanged:
    """A watch fired: something at `path`, or under it when it ends with '/', changed."""

    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLost:
    """The daemon went away; events are being lost until `Resynced`."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Resynced:
    """Watches are (re)registered on a new connection: re-read everything watched."""

    reconnect: bool  # False for the first connection of `changes()`


Change = KeyChanged | ConnectionLost | Resynced


class QubesDBClient(Protocol):
    """What the gateway needs from QubesDB; `QubesDBAdapter` is the implementation."""

    def read(self, path: str) -> bytes | None: ...
    def multiread(self, prefix: str) -> dict[str, bytes]: ...
    def list(self, prefix: str) -> list[str]: ...
    def write(self, path: str, value: str | bytes) -> None: ...
    def rm(self, path: str) -> None: ...
    def watch(self, path: str) -> None: ...
    def changes(self) -> AsyncIterator[Change]: ...
    def close(self) -> None: ...


class QubesDBAdapter:
    """QubesDB through the binding, with the rules of the module docstring."""

    def __init__(self, binding: Binding, *, retry_delays: Sequence[float] = RETRY_DELAYS) -> None:
        if not retry_delays:
            raise ValueError("retry_delays needs at least one delay")
        self._binding = binding
        self._retry_delays = tuple(retry_delays)
        self._owner = threading.get_ident()
        self._command: RawHandle | None = None
        self._watcher: RawHandle | None = None
        self._watched: list[str] = []
        self._closed = False
        self._iterating = False
        self._wakeup: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ commands

    def read(self, path: str) -> bytes | None:
        """The key's value; `None` when it does not exist, `b''` when it is empty."""
        key = check_key(path)
        return self._run(f"read {key}", lambda h: h.read(key))

    def multiread(self, prefix: str) -> dict[str, bytes]:
        """Every key whose path starts with `prefix` (a plain string prefix: '/a' matches '/ab')."""
        checked = check_prefix(prefix)
        found = self._run(f"multiread {checked}", lambda h: h.multiread(checked))
        if found is None:  # a failure the binding masks when errno happens to be ENOENT
            self._close_command()
            raise QubesDBRefused(f"QubesDB multiread {checked} failed")
        return dict(found)

    def list(self, prefix: str) -> list[str]:
        """Full paths starting with `prefix`, sorted bytewise (plain string prefix)."""
        checked = check_prefix(prefix)
        found = self._run(f"list {checked}", lambda h: h.list(checked))
        if found is None:  # as for multiread
            self._close_command()
            raise QubesDBRefused(f"QubesDB list {checked} failed")
        return list(found)

    def rm(self, path: str) -> None:
        """Remove a key, or a subtree when `path` ends with '/'; a missing key is no error."""
        checked = check_prefix(path)
        if checked == "/":
            raise InvalidPathError("refusing to remove '/', the whole database")
        self._run(f"rm {checked}", lambda h: h.rm(checked))

    def write(self, path: str, value: str | bytes) -> None:
        """Store `value` at `path` on a fresh handle (never a stale one; see the docstring)."""
        self._check_thread()
        key, data = check_key(path), check_value(value)
        for attempt in (1, 2):
            handle = self._open(f"write {key}")
            try:
                handle.write(key, data)
                return
            except self._binding.disconnected as exc:
                if attempt == 2:
                    raise QubesDBUnavailable(
                        f"QubesDB went away during write {key}: {exc}"
                    ) from exc
            except self._binding.error as exc:
                raise QubesDBRefused(f"QubesDB refused write {key}: {exc}") from exc
            finally:
                handle.close()

    def _run(self, what: str, call: Callable[[RawHandle], T]) -> T:
        self._check_thread()
        for attempt in (1, 2):
            if self._command is None:
                self._command = self._open(what)
            try:
                return call(self._command)
            except self._binding.disconnected as exc:
                self._close_command()
                if attempt == 2:
                    raise QubesDBUnavailable(f"QubesDB went away during {what}: {exc}") from exc
                log.info("QubesDB connection lost during %s; retrying on a new handle", what)
            except self._binding.error as exc:
                self._close_command()  # its state is unknown now; the next call starts afresh
                raise QubesDBRefused(f"QubesDB refused {what}: {exc}") from exc
        raise AssertionError("unreachable")

    def _open(self, what: str) -> RawHandle:
        if self._closed:
            raise QubesDBUnavailable(f"cannot {what}: this QubesDB adapter is closed")
        try:
            return self._binding.connect()
        except self._binding.error as exc:
            raise QubesDBUnavailable(f"cannot {what}: QubesDB daemon unreachable ({exc})") from exc

    def _close_command(self) -> None:
        handle, self._command = self._command, None
        if handle is not None:
            handle.close()

    def _check_thread(self) -> None:
        if threading.get_ident() != self._owner:
            raise RuntimeError(
                "QubesDB handles are not thread-safe: use the adapter only from the thread that "
                "created it"
            )

    # ------------------------------------------------------------------ watches

    def watch(self, path: str) -> None:
        """Watch `path` (exactly) or, ending with '/', its subtree; kept across reconnects.

        The key need not exist. Read it yourself after watching: an event that fires while the
        watch is being registered may stay hidden until the next one.
        """
        self._check_thread()
        checked = check_prefix(path)
        if checked in self._watched:
            return
        self._watched.append(checked)
        if self._watcher is not None:
            try:
                self._watcher.watch(checked)
            except self._binding.error as exc:
                # `changes()` notices the broken handle at its next wake-up and rebuilds it.
                log.info("QubesDB watch %s failed (%s); re-registering on reconnect", checked, exc)
                self._drop_handles()
                self._wake()

    async def changes(self) -> AsyncIterator[Change]:
        """Watch events, for ever (until `close()`): the first item is `Resynced(reconnect=False)`.

        Only one iteration at a time. Connection attempts are retried with `retry_delays`.
        """
        self._check_thread()
        if self._iterating:
            raise RuntimeError("changes() is already being iterated")
        self._iterating = True
        reconnect = False
        try:
            while not self._closed:
                if self._watcher is None:
                    if not await self._connect_watcher():
                        return
                    yield Resynced(reconnect=reconnect)
                    reconnect = True
                    continue
                watcher = self._watcher
                await self._readable(watcher.watch_fd())
                if self._closed:
                    return
                if self._watcher is not watcher:
                    yield ConnectionLost(reason="the watch handle was dropped")
                    continue
                try:
                    path = watcher.read_watch()
                except self._binding.error as exc:
                    reason = (
                        "QubesDB daemon went away"
                        if isinstance(exc, self._binding.disconnected)
                        else f"QubesDB watch failed: {exc}"
                    )
                    log.warning("%s; reconnecting and re-registering watches", reason)
                    self._drop_handles()
                    yield ConnectionLost(reason=reason)
                    continue
                yield KeyChanged(path=path)
        finally:
            self._iterating = False

    async def _connect_watcher(self) -> bool:
        attempt = 0
        while not self._closed:
            try:
                watcher = self._binding.connect()
            except self._binding.error as exc:
                delay = self._retry_delays[min(attempt, len(self._retry_delays) - 1)]
                level = logging.WARNING if attempt == 0 else logging.DEBUG
                log.log(level, "QubesDB unreachable (%s); retrying in %.2f s", exc, delay)
                attempt += 1
                await self._sleep(delay)
                continue
            try:
                for path in self._watched:
                    watcher.watch(path)
            except self._binding.error as exc:
                watcher.close()
                log.info("QubesDB went away while registering watches (%s); retrying", exc)
                attempt += 1
                await self._sleep(self._retry_delays[0])
                continue
            self._watcher = watcher
            # A command handle opened before a disconnection may be stale: start afresh.
            self._close_command()
            return True
        return False

    async def _readable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        wakeup: asyncio.Future[None] = loop.create_future()
        self._wakeup = wakeup

        def ready() -> None:
            if not wakeup.done():
                wakeup.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await wakeup
        finally:
            loop.remove_reader(fd)
            self._wakeup = None

    async def _sleep(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        wakeup: asyncio.Future[None] = loop.create_future()
        self._wakeup = wakeup

        def ready() -> None:
            if not wakeup.done():
                wakeup.set_result(None)

        handle = loop.call_later(delay, ready)
        try:
            await wakeup
        finally:
            handle.cancel()
            self._wakeup = None

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _drop_handles(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()
        self._close_command()

    def close(self) -> None:
        """Close both handles and end `changes()`; later calls raise `QubesDBUnavailable`."""
        self._check_thread()
        self._closed = True
        self._drop_handles()
        self._wake()
