"""The QubesDB adapter, and the double's faithfulness: each test runs on the in-memory double
(tests/helpers/fake_qubesdb.py) and on the real daemon + binding built from ../shared/qubesdb.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import select
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from qubes_miragevpn.gateway.qubesdb import (
    MAX_VALUE,
    Binding,
    Change,
    ConnectionLost,
    InvalidPathError,
    InvalidValueError,
    KeyChanged,
    QubesDBAdapter,
    QubesDBRefused,
    QubesDBUnavailable,
    Resynced,
    check_key,
    check_prefix,
    check_value,
    load_binding,
)
from tests.helpers.fake_qubesdb import Error, FakeAbort, FakeDaemonHung, FakeQubesDB
from tests.helpers.real_qubesdb import RealQubesDB

FAST = (0.02, 0.05, 0.1)  # reconnect back-off for tests
_tags = itertools.count()


@dataclass
class Backend:
    """One QubesDB to test against: the double or the real daemons."""

    name: str
    binding: Binding
    dom0_write: Callable[[str, str], None]
    restart: Callable[[], None]
    stop: Callable[[], None]
    start: Callable[[], None]
    tag: str  # a key prefix of this test's own

    def raw(self) -> Any:
        return self.binding.connect()


@pytest.fixture(params=["fake", "real"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    tag = f"/t{next(_tags)}"
    if request.param == "fake":
        fake = FakeQubesDB()
        yield Backend(
            "fake", fake.binding(), fake.dom0_write, fake.restart, fake.stop, fake.start, tag
        )
        assert not fake.hung, "the adapter wrote on a stale handle: the real daemon would hang"
        return
    real: RealQubesDB = request.getfixturevalue("real_qubesdb")
    yield Backend(
        "real", real.binding(), real.dom0.write, real.restart_vm, real.stop_vm, real.start_vm, tag
    )
    real.dom0.rm(tag + "/")


def readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Collector:
    """Iterates `changes()` in a task of its own, so tests can wait with timeouts."""

    def __init__(self, db: QubesDBAdapter) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run(db.changes()))

    async def _run(self, changes: AsyncIterator[Change]) -> None:
        async for change in changes:
            await self.queue.put(change)

    async def next(self, timeout: float = 5.0) -> Change:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def quiet(self, timeout: float = 0.3) -> bool:
        """True when no change arrives within `timeout`."""
        await asyncio.sleep(timeout)
        assert self.queue.empty(), f"unexpected change {self.queue.get_nowait()}"
        return True

    async def ended(self, timeout: float = 2.0) -> bool:
        await asyncio.wait_for(self.task, timeout)
        return True


# ------------------------------------------------------------------ validation (pure)


@pytest.mark.parametrize(
    "path",
    ["", "x", "/a b", "/a\0b", "/é", "/" + "a" * 63, "/a;b", "/a\nb", "/a*"],
)
def test_bad_paths_are_rejected_before_the_binding(path: str) -> None:
    with pytest.raises(InvalidPathError):
        check_prefix(path)
    with pytest.raises(InvalidPathError):
        check_key(path)


def test_path_rules() -> None:
    assert check_key("/" + "a" * 62) == "/" + "a" * 62
    assert check_prefix("/dir/") == "/dir/"
    assert check_key("/qubes-service/qubes-miragevpn") == "/qubes-service/qubes-miragevpn"
    assert check_key("/A-z_0.9:@x") == "/A-z_0.9:@x"
    with pytest.raises(InvalidPathError, match="subtree"):
        check_key("/dir/")
    with pytest.raises(InvalidPathError, match="str"):
        check_key(b"/bytes")


def test_value_rules() -> None:
    assert check_value("é") == "é".encode()
    assert check_value(b"x" * MAX_VALUE) == b"x" * MAX_VALUE
    with pytest.raises(InvalidValueError, match="3071"):
        check_value(b"x" * (MAX_VALUE + 1))
    with pytest.raises(InvalidValueError, match="NUL"):
        check_value("a\0b")
    with pytest.raises(InvalidValueError):
        check_value(3)


def test_missing_module_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "qubesdb", None)  # import fails as if not installed
    with pytest.raises(QubesDBUnavailable, match="--qubesdb-file"):
        load_binding()


# ------------------------------------------------------------------ the binding, measured


def test_binding_types_and_prefix_matching(backend: Backend) -> None:
    h, t = backend.raw(), backend.tag
    try:
        h.write(f"{t}/dir/b", "2")
        h.write(f"{t}/dir/a", b"1")
        h.write(f"{t}/dirx", "")
        h.write(f"{t}/dir/A", "0")
        assert h.read(f"{t}/dir/a") == b"1"
        assert h.read(f"{t}/dirx") == b""
        assert h.read(f"{t}/missing") is None
        assert h.rm(f"{t}/missing") is None
        assert h.list(f"{t}/dir") == [f"{t}/dir/A", f"{t}/dir/a", f"{t}/dir/b", f"{t}/dirx"]
        assert h.list(f"{t}/nothing") == []
        assert h.multiread(f"{t}/dir/") == {
            f"{t}/dir/A": b"0",
            f"{t}/dir/a": b"1",
            f"{t}/dir/b": b"2",
        }
        assert h.multiread(f"{t}/nothing") == {}
        h.write(f"{t}/max", b"x" * MAX_VALUE)
        assert h.read(f"{t}/max") == b"x" * MAX_VALUE
        with pytest.raises(backend.binding.error) as info:
            h.write(f"{t}/bad", b"x" * (MAX_VALUE + 1))
        assert not isinstance(info.value, backend.binding.disconnected)
        if backend.name == "fake":
            # The real VM daemon refuses it too, but forwards it to dom0 first, which breaks
            # the vchan link ("invalid data received from peer"; once the dom0-side peer died):
            # never sent to the real one here, and the adapter refuses it before the binding.
            with pytest.raises(backend.binding.error):
                h.write(f"{t}/bad", b"a\0b")
        # Rejected inside the library: Error, or None when errno happens to hold ENOENT
        for bad_call in (
            lambda: h.list(""),
            lambda: h.read("/" + "a" * 63),
            lambda: h.read("relative"),
        ):
            try:
                assert bad_call() is None
            except backend.binding.error as exc:
                assert not isinstance(exc, backend.binding.disconnected)
    finally:
        h.close()


def test_real_binding_returns_none_for_bad_calls_when_errno_is_enoent(
    real_qubesdb: RealQubesDB,
) -> None:
    """Why the adapter validates: the binding turns a rejected call into None when the
    thread's errno is a leftover ENOENT (it tests `errno == ENOENT` after the library failed)."""
    libc = ctypes.CDLL(None)  # without use_errno: the open() below leaves ENOENT in errno
    h = real_qubesdb.module.QubesDB()
    try:
        libc.open(b"/nonexistent/qubes-miragevpn-test", 0)
        assert h.read("relative") is None
        libc.open(b"/nonexistent/qubes-miragevpn-test", 0)
        assert h.list("/" + "a" * 63) is None  # not even a list
    finally:
        h.close()


def test_binding_watch_semantics(backend: Backend) -> None:
    w, h, t = backend.raw(), backend.raw(), backend.tag
    try:
        w.watch(f"{t}/x")
        w.watch(f"{t}/dir/")
        fd = w.watch_fd()
        h.write(f"{t}/dir/deep/key", "1")
        assert readable(fd, 2) and w.read_watch() == f"{t}/dir/deep/key"
        h.write(f"{t}/x/sub", "1")  # '/x' is exact
        h.write(f"{t}/dirx", "1")  # '/dir/' needs the slash
        h.write(f"{t}/x", "1")
        assert readable(fd, 2) and w.read_watch() == f"{t}/x"
        h.write(f"{t}/x", "1")  # unchanged value: fires too
        assert readable(fd, 2) and w.read_watch() == f"{t}/x"
        h.rm(f"{t}/dir/")  # one event for the whole subtree
        assert readable(fd, 2) and w.read_watch() == f"{t}/dir/"
        h.rm(f"{t}/dir/")  # nothing left to remove: no event
        w.write(f"{t}/x", "own")  # the watcher's own write fires its own watch
        assert readable(fd, 2) and w.read_watch() == f"{t}/x"
        assert not readable(fd, 0.2)
    finally:
        w.close()
        h.close()


def test_binding_hides_events_that_arrive_during_a_command(backend: Backend) -> None:
    w, h, t = backend.raw(), backend.raw(), backend.tag
    try:
        w.watch(f"{t}/k")
        h.write(f"{t}/k", "1")
        h.write(f"{t}/k", "2")
        assert readable(w.watch_fd(), 2)
        time.sleep(0.1)  # both events are on the socket now
        w.read(f"{t}/k")  # a command on the watching handle queues them inside the library
        assert not readable(w.watch_fd(), 0.2)
        assert [w.read_watch(), w.read_watch()] == [f"{t}/k", f"{t}/k"]
    finally:
        w.close()
        h.close()


def test_binding_restart_drops_watches(backend: Backend) -> None:
    w, t = backend.raw(), backend.tag
    try:
        w.watch(f"{t}/k")
        backend.restart()
        assert readable(w.watch_fd(), 5)
        with pytest.raises(backend.binding.disconnected):
            w.read_watch()
        assert w.read(f"{t}/k") is None  # the library reconnects by itself...
        backend.dom0_write(f"{t}/k", "1")
        wait_until(lambda: w.read(f"{t}/k") == b"1")
        assert not readable(w.watch_fd(), 0.3)  # ...but the old watch is gone
    finally:
        w.close()


def test_binding_without_daemon(backend: Backend) -> None:
    h = backend.raw()
    try:
        backend.stop()
        try:
            with pytest.raises(backend.binding.error) as info:
                backend.raw()
            assert not isinstance(info.value, backend.binding.disconnected)
            with pytest.raises(backend.binding.disconnected):
                h.read("/qubes-ip")
        finally:
            backend.start()
    finally:
        h.close()


# ------------------------------------------------------------------ the adapter


def test_adapter_reads_and_writes(backend: Backend) -> None:
    db, t = QubesDBAdapter(backend.binding), backend.tag
    try:
        db.write(f"{t}/a", "10.137.0.5")
        db.write(f"{t}/b", b"")
        assert db.read(f"{t}/a") == b"10.137.0.5"
        assert db.read(f"{t}/b") == b""
        assert db.read(f"{t}/none") is None
        assert db.list(f"{t}/") == [f"{t}/a", f"{t}/b"]
        assert db.multiread(f"{t}/") == {f"{t}/a": b"10.137.0.5", f"{t}/b": b""}
        db.rm(f"{t}/a")
        assert db.read(f"{t}/a") is None
        db.rm(f"{t}/a")  # missing: no error
    finally:
        db.close()


def test_adapter_validates_before_calling(backend: Backend) -> None:
    db, t = QubesDBAdapter(backend.binding), backend.tag
    try:
        with pytest.raises(InvalidPathError):
            db.read(f"{t}/bad path")
        with pytest.raises(InvalidPathError):
            db.write(f"{t}/dir/", "x")  # would drop the connection, then hang the next write
        with pytest.raises(InvalidValueError):
            db.write(f"{t}/k", "x" * (MAX_VALUE + 1))
        with pytest.raises(InvalidValueError):
            db.write(f"{t}/k", "a\0b")
        with pytest.raises(InvalidPathError):
            db.watch("no-slash")
        with pytest.raises(InvalidPathError, match="whole database"):
            db.rm("/")
        if backend.name == "fake":  # the real process would die: see the subprocess test
            with pytest.raises(InvalidPathError):
                db.multiread(f"{t}/a b")
        db.write(f"{t}/k", "still fine")
        assert db.read(f"{t}/k") == b"still fine"
    finally:
        db.close()


def test_fake_multiread_aborts_like_the_real_one() -> None:
    raw = FakeQubesDB().binding().connect()
    with pytest.raises(FakeAbort):
        raw.multiread("/a b")


def test_real_multiread_aborts_and_the_adapter_prevents_it(real_qubesdb: RealQubesDB) -> None:
    """Measured in a child process: the binding dies with SIGABRT; the adapter raises first."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(real_qubesdb.prefix / "python")!r})
        import qubesdb
        from qubes_miragevpn.gateway.qubesdb import Binding, InvalidPathError, QubesDBAdapter
        db = QubesDBAdapter(Binding.from_module(qubesdb))
        try:
            db.multiread("/bad path")
        except InvalidPathError:
            print("adapter refused", flush=True)
        if sys.argv[1] == "raw":
            qubesdb.QubesDB().multiread("/bad path")
        print("survived", flush=True)
        """
    )
    adapter = subprocess.run(
        [sys.executable, "-c", script, "adapter"], capture_output=True, text=True, timeout=30
    )
    assert adapter.returncode == 0, adapter.stderr
    assert adapter.stdout.split("\n")[:2] == ["adapter refused", "survived"]
    raw = subprocess.run(
        [sys.executable, "-c", script, "raw"], capture_output=True, text=True, timeout=30
    )
    assert raw.returncode == -6, (raw.returncode, raw.stderr)  # SIGABRT
    assert "survived" not in raw.stdout


def test_adapter_is_bound_to_its_thread(backend: Backend) -> None:
    db = QubesDBAdapter(backend.binding)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            db.read("/qubes-ip")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(10)
    db.close()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "thread" in str(errors[0])


def test_adapter_watches_and_resyncs_after_restart(backend: Backend) -> None:
    t = backend.tag

    async def body() -> None:
        db = QubesDBAdapter(backend.binding, retry_delays=FAST)
        try:
            db.watch(f"{t}/k")
            db.watch(f"{t}/dir/")
            changes = Collector(db)
            assert await changes.next() == Resynced(reconnect=False)
            backend.dom0_write(f"{t}/k", "1")
            assert await changes.next() == KeyChanged(path=f"{t}/k")
            db.write(f"{t}/dir/a/b", "own write")
            assert await changes.next() == KeyChanged(path=f"{t}/dir/a/b")
            db.rm(f"{t}/dir/")
            assert await changes.next() == KeyChanged(path=f"{t}/dir/")
            assert db.read(f"{t}/k") == b"1"  # the command handle is now open

            backend.restart()
            lost = await changes.next()
            assert isinstance(lost, ConnectionLost), lost
            assert await changes.next() == Resynced(reconnect=True)
            assert db.read(f"{t}/k") == b"1"  # content survives a VM-side restart
            backend.dom0_write(f"{t}/k", "2")
            assert await changes.next() == KeyChanged(path=f"{t}/k")
            db.write(f"{t}/k", "3")  # a fresh handle: no stale write
            assert await changes.next() == KeyChanged(path=f"{t}/k")
            assert await changes.quiet()
        finally:
            db.close()
        assert await changes.ended()

    asyncio.run(body())


@pytest.mark.timeout(60)
def test_adapter_never_writes_on_a_stale_handle(backend: Backend) -> None:
    """A restart the watcher has not seen yet: the next write must not hang the daemon."""
    db, t = QubesDBAdapter(backend.binding), backend.tag
    try:
        db.write(f"{t}/k", "before")
        assert db.read(f"{t}/k") == b"before"  # command handle open
        backend.restart()
        db.write(f"{t}/k", "after")
        assert db.read(f"{t}/k") == b"after"
        db.write(f"{t}/k", "again")
        assert db.read(f"{t}/k") == b"again"
    finally:
        db.close()
    probe = backend.raw()  # the daemon still answers other clients
    try:
        assert probe.read(f"{t}/k") == b"again"
    finally:
        probe.close()


def test_adapter_waits_out_a_daemon_outage(backend: Backend) -> None:
    t = backend.tag

    async def body() -> None:
        db = QubesDBAdapter(backend.binding, retry_delays=FAST)
        try:
            db.watch(f"{t}/k")
            changes = Collector(db)
            assert await changes.next() == Resynced(reconnect=False)
            backend.stop()
            try:
                assert isinstance(await changes.next(), ConnectionLost)
                with pytest.raises(QubesDBUnavailable):
                    db.read(f"{t}/k")
                with pytest.raises(QubesDBUnavailable):
                    db.write(f"{t}/k", "x")
                assert await changes.quiet()  # retrying quietly while the daemon is down
            finally:
                backend.start()
            assert await changes.next() == Resynced(reconnect=True)
            backend.dom0_write(f"{t}/k", "back")
            assert await changes.next() == KeyChanged(path=f"{t}/k")
            assert db.read(f"{t}/k") == b"back"
        finally:
            db.close()
        assert await changes.ended()

    asyncio.run(body())


def test_adapter_close_ends_changes(backend: Backend) -> None:
    async def body() -> None:
        db = QubesDBAdapter(backend.binding, retry_delays=FAST)
        db.watch(f"{backend.tag}/k")
        changes = Collector(db)
        assert await changes.next() == Resynced(reconnect=False)
        await asyncio.sleep(0.05)  # now waiting on the watch fd
        db.close()
        assert await changes.ended()
        with pytest.raises(QubesDBUnavailable, match="closed"):
            db.read("/qubes-ip")

    asyncio.run(body())


def test_adapter_retries_until_the_daemon_exists() -> None:
    fake = FakeQubesDB(running=False)

    async def body() -> None:
        db = QubesDBAdapter(fake.binding(), retry_delays=FAST)
        try:
            db.watch("/k")
            changes = Collector(db)
            assert await changes.quiet(0.2)
            fake.start()
            assert await changes.next() == Resynced(reconnect=False)
            fake.dom0_write("/k", "1")
            assert await changes.next() == KeyChanged(path="/k")
        finally:
            db.close()
        assert await changes.ended()

    asyncio.run(body())


def test_fake_hangs_on_a_stale_write_like_the_real_daemon() -> None:
    """The double catches the one mistake that would hang the real daemon for every client."""
    fake = FakeQubesDB()
    raw = fake.binding().connect()
    raw.write("/k", "1")
    fake.restart()
    with pytest.raises(FakeDaemonHung):
        raw.write("/k", "2")
    assert fake.hung
    fresh = FakeQubesDB()
    raw = fresh.binding().connect()
    with pytest.raises(Error):
        raw.write("/dir/", "x")  # drops the connection without the library noticing
    with pytest.raises(FakeDaemonHung):
        raw.write("/k", "2")


def test_adapter_does_not_take_a_masked_failure_for_an_empty_result() -> None:
    """The binding returns None for a failed list/multiread when errno is a leftover ENOENT."""
    fake = FakeQubesDB()
    db = QubesDBAdapter(fake.binding())

    def masked() -> None:
        assert db.read("/k") == b"1"  # opens the command handle
        handle: Any = db._command
        handle.list = lambda prefix: None
        handle.multiread = lambda prefix: None

    try:
        db.write("/k", "1")
        masked()
        with pytest.raises(QubesDBRefused, match="list /k failed"):
            db.list("/k")
        assert db._command is None  # its state is unknown: not reused
        masked()
        with pytest.raises(QubesDBRefused, match="multiread /k failed"):
            db.multiread("/k")
        assert db.list("/k") == ["/k"]  # a new handle
    finally:
        db.close()
