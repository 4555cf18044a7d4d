"""An in-memory QubesDB daemon and binding with the measured behaviours of the real ones.

`FakeQubesDB` plays the VM's `qubesdb-daemon`; `fake.module` plays the `qubesdb` extension
module (`QubesDB`, `Error`, `DisconnectedError`), and `fake.binding()` wraps it for the adapter.
The behaviours come from reference/qubesdb-binding.md and were checked against the real daemon
(tests/qubes_miragevpn/gateway/test_qubesdb.py runs the same tests on both):

- `read`/`multiread` give bytes (None for a missing key, b'' for an empty value); `list` and
  `read_watch` give str; `list`/`multiread` are plain string-prefix matches, sorted bytewise;
- paths: '/' first, at most 63 characters, only [A-Za-z0-9_.:@/-], else `Error`; values at most
  3071 bytes and no NUL, else `Error`; `list('')`/`multiread('')` raise `Error` (the real
  binding returns None instead when the thread's errno happens to hold ENOENT; a NUL value
  written in the VM also breaks the real VM-dom0 link: neither is modelled, the adapter
  prevents both);
- a forbidden character in a `multiread` path aborts the real process: here it raises
  `FakeAbort`, a BaseException no adapter may catch;
- `watch('/x')` is exact, `watch('/dir/')` a subtree; every write fires (own and unchanged ones
  too); `rm('/dir/')` fires one '/dir/' event; removing a missing key fires nothing;
- `watch_fd()` is a real socket that turns readable per event; events that arrive while a
  command runs on the handle move into a hidden queue (newest first) that the fd does not show;
- the daemon can stop, start and restart (content kept, as in a VM): handles see the fd turn
  readable and `DisconnectedError`; a handle that raised it never delivers watches again; the
  first non-empty write on a handle whose daemon restarted (or after a write to a path ending
  in '/') hangs the real daemon: here it raises `FakeDaemonHung` and marks the daemon hung.
"""

from __future__ import annotations

import re
import socket
import types
from collections import deque
from dataclasses import dataclass, field

from qubes_miragevpn.gateway.qubesdb import Binding

MAX_PATH = 63
MAX_VALUE = 3071
_PATH = re.compile(r"/[A-Za-z0-9_.:@/-]*")


class Error(RuntimeError):
    """qubesdb.Error: errno carries no meaning."""


class DisconnectedError(Error):
    """qubesdb.DisconnectedError."""


class FakeAbort(BaseException):  # stands for SIGABRT, not an error
    """The real process would have died with SIGABRT here (an assertion in libqubesdb)."""


class FakeDaemonHung(BaseException):
    """The real daemon would now hang for every client (a stale-handle write)."""


def _path_ok(path: str) -> bool:
    return len(path) <= MAX_PATH and _PATH.fullmatch(path) is not None


@dataclass(eq=False)
class _Watch:
    path: str
    handle: FakeHandle

    def matches(self, changed: str) -> bool:
        if self.path.endswith("/"):
            return changed.startswith(self.path)
        return changed == self.path


@dataclass
class FakeQubesDB:
    """The daemon: one database, the connected handles and their watches."""

    entries: dict[str, bytes] = field(default_factory=dict)
    running: bool = True
    hung: bool = False
    handles: list[FakeHandle] = field(default_factory=list)
    watches: list[_Watch] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class QubesDB(FakeHandle):
            def __init__(self) -> None:  # the real one: QubesDB() in the VM, no argument
                super().__init__(fake)

        self.module = types.SimpleNamespace(
            QubesDB=QubesDB, Error=Error, DisconnectedError=DisconnectedError
        )

    def binding(self) -> Binding:
        return Binding.from_module(self.module)

    # the other side: dom0 (qubesd) writing the VM's configuration
    def dom0_write(self, path: str, value: str | bytes) -> None:
        assert _path_ok(path) and not path.endswith("/"), path
        data = value.encode() if isinstance(value, str) else value
        self._store(path, data)

    def dom0_rm(self, path: str) -> None:
        self._remove(path)

    # daemon life cycle
    def stop(self) -> None:
        """The daemon exits: every connection drops, every watch is gone."""
        self.running = False
        self.watches.clear()
        for handle in list(self.handles):
            handle._drop_connection()
        self.handles.clear()

    def start(self) -> None:
        self.running = True

    def restart(self) -> None:
        """`systemctl restart qubes-db` in a VM: the content survives (re-synced from dom0)."""
        self.stop()
        self.start()

    # the database
    def _store(self, path: str, data: bytes) -> None:
        self.entries[path] = data
        self._fire(path)

    def _remove(self, path: str) -> bool:
        if path.endswith("/"):
            gone = [k for k in self.entries if k.startswith(path)]
        else:
            gone = [path] if path in self.entries else []
        for key in gone:
            del self.entries[key]
        if gone:
            self._fire(path)
        return bool(gone)

    def _matching(self, prefix: str) -> list[str]:
        return sorted((k for k in self.entries if k.startswith(prefix)), key=str.encode)

    def _fire(self, path: str) -> None:
        for watch in list(self.watches):
            if watch.matches(path):
                watch.handle._deliver(path)


class FakeHandle:
    """One client connection (`qubesdb.QubesDB`)."""

    def __init__(self, daemon: FakeQubesDB) -> None:
        if not daemon.running:
            raise Error(2, "No such file or directory")  # connect() fails: ENOENT
        self._daemon = daemon
        self._ours, self._theirs = socket.socketpair()
        self._alive = True  # the socket reaches the running daemon
        self._lib_connected = True  # libqubesdb's own flag: cleared only by a failed command
        self._broken = False  # a command raised DisconnectedError: watches never deliver again
        self._in_socket: deque[str] = deque()  # events sent, not yet read (fd readable)
        self._hidden: list[str] = []  # events the library queued during a command
        self._closed = False
        daemon.handles.append(self)

    # the binding's methods
    def read(self, path: str) -> bytes | None:
        self._command(path)
        return self._daemon.entries.get(path)

    def write(self, path: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else value
        self._command(path, sends_data=bool(data))
        if path.endswith("/"):
            self._drop_connection()  # the daemon drops it; the library does not notice
            raise Error(0, "Error")
        if len(data) > MAX_VALUE or b"\0" in data:
            raise Error(0, "Error")
        self._daemon._store(path, data)

    def rm(self, path: str) -> None:
        self._command(path)
        self._daemon._remove(path)

    def list(self, prefix: str) -> list[str]:
        self._command(prefix, empty_ok=False)
        return self._daemon._matching(prefix)

    def multiread(self, prefix: str) -> dict[str, bytes]:
        if prefix.startswith("/") and len(prefix) <= MAX_PATH and not _PATH.fullmatch(prefix):
            raise FakeAbort(f"multiread({prefix!r}): assertion in libqubesdb, SIGABRT")
        self._command(prefix, empty_ok=False)
        return {k: self._daemon.entries[k] for k in self._daemon._matching(prefix)}

    def watch(self, path: str) -> None:
        self._command(path)
        if not self._broken:
            self._daemon.watches.append(_Watch(path, self))

    def unwatch(self, path: str) -> None:
        self._command(path)
        for watch in self._daemon.watches:
            if watch.handle is self and watch.path == path:
                self._daemon.watches.remove(watch)
                break

    def read_watch(self) -> str:
        self._check_open()
        if self._hidden:
            return self._hidden.pop()
        if self._in_socket:
            self._ours.recv(1)
            return self._in_socket.popleft()
        if not self._alive:
            raise DisconnectedError(32, "QubesDB disconnected")
        raise AssertionError("read_watch() would block for ever: no event is pending")

    def watch_fd(self) -> int:
        self._check_open()
        return self._ours.fileno()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._daemon.watches[:] = [w for w in self._daemon.watches if w.handle is not self]
        if self in self._daemon.handles:
            self._daemon.handles.remove(self)
        self._ours.close()
        self._theirs.close()

    # machinery
    def _check_open(self) -> None:
        if self._closed:
            raise SystemError("<class 'qubesdb.Error'> returned a result with an exception set")

    def _command(self, path: str, *, empty_ok: bool = True, sends_data: bool = False) -> None:
        self._check_open()
        if self._daemon.hung:
            raise FakeDaemonHung("the daemon hangs: an earlier stale write never completed")
        if (not path and not empty_ok) or (path and not path.startswith("/")):
            raise Error(0, "Error")  # checked by the library before sending
        if len(path) > MAX_PATH:
            raise Error(0, "Error")
        if not self._alive:
            if not self._daemon.running:
                self._lib_connected = False
                self._broken = True
                raise DisconnectedError(32, "QubesDB disconnected")
            if self._lib_connected and sends_data:
                # EPIPE on the header: the library reconnects and resends the header only
                self._daemon.hung = True
                raise FakeDaemonHung(f"non-empty write of {path} on a stale handle")
            self._reconnect()  # silently, without re-registering any watch
        # events already on the socket are read while waiting for the response: hidden
        while self._in_socket:
            self._ours.recv(1)
            self._hidden.append(self._in_socket.popleft())  # popped from the end: newest first
        if not _PATH.fullmatch(path):
            raise Error(0, "Error")

    def _reconnect(self) -> None:
        self._ours.close()
        self._theirs.close()
        self._ours, self._theirs = socket.socketpair()
        self._in_socket.clear()
        self._alive = True
        self._lib_connected = True
        self._daemon.handles.append(self)

    def _deliver(self, path: str) -> None:
        if self._alive and not self._broken:
            self._in_socket.append(path)
            self._theirs.send(b"!")

    def _drop_connection(self) -> None:
        self._alive = False
        self._daemon.watches[:] = [w for w in self._daemon.watches if w.handle is not self]
        if self in self._daemon.handles:
            self._daemon.handles.remove(self)
        self._theirs.close()  # our end reads EOF: the fd turns readable
