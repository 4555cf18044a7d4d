"""Reading the files a profile names: regular files only, never blocking, never too large, and
optionally only from the profile's own folder.

The engine never opens files: `parse_config` asks an injected `read_file(name) -> bytes` for each
file a config names (`ca ca.crt`). `ProfileFiles` is that callable for every runtime (the unix
client, the checker, the gateway). A name is refused before anything is opened when it points
into a pseudo-filesystem (/proc, /sys, /dev: `/dev/stdin`, `/proc/self/fd/0`, `/proc/kmsg`) or
is not a regular file (FIFO, device, socket, directory); the file is then opened with
O_NONBLOCK|O_NOCTTY, checked again with `fstat` on the descriptor (the name may have changed in
between), and read up to the size cap. With `confine=True` (the gateway) a name must stay inside
the profile's folder: no `..`, no absolute path elsewhere, no symbolic link leading out.
Without it (the unix client, the checker) files outside are read but listed in `outside`, so the
caller can warn and the checker can keep their content off the screen.
"""

from __future__ import annotations

import os
import stat
from pathlib import PurePosixPath

from miragevpn.config.context import MAX_FILE_BYTES
from miragevpn.config.lexer import MAX_CONFIG_BYTES
from miragevpn.errors import ConfigError

__all__ = ["MAX_CONFIG_BYTES", "MAX_FILE_BYTES", "ProfileFiles", "read_profile", "read_regular"]

# Kernel pseudo-filesystems: their "files" block, never end, or hand out another file's data.
PSEUDO_ROOTS = ("/proc", "/sys", "/dev")
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
_CHUNK = 64 * 1024


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _pseudo(path: str) -> str | None:
    return next((root for root in PSEUDO_ROOTS if _under(path, root)), None)


def _refuse_pseudo(path: str) -> None:
    if (root := _pseudo(path)) is not None:
        raise ConfigError(f"it is in the kernel's {root} pseudo-filesystem, not a regular file")


def _opened_path(fd: int, fallback: str) -> str:
    """The real path of an open descriptor (what the kernel opened, after every link)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(fallback)


def read_regular(path: str, *, max_bytes: int = MAX_FILE_BYTES) -> tuple[bytes, str]:
    """(content, real path) of the regular file `path`; at most `max_bytes`, never blocking.

    Raises `ConfigError` (plain words, no file content) for what we refuse and `OSError` for
    what the system refuses (missing file, no permission).
    """
    absolute = os.path.abspath(path)
    _refuse_pseudo(os.path.normpath(absolute))
    _refuse_pseudo(os.path.realpath(absolute))
    mode = os.stat(absolute).st_mode
    if not stat.S_ISREG(mode):
        raise ConfigError(f"it is {_kind(mode)}, not a regular file")
    fd = os.open(absolute, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"it is {_kind(st.st_mode)}, not a regular file")
        real = _opened_path(fd, absolute)
        _refuse_pseudo(real)
        if st.st_size > max_bytes:
            raise ConfigError(f"it is larger than {max_bytes} bytes")
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:  # at most max_bytes // _CHUNK + 2 reads
            try:
                chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            except BlockingIOError:
                raise ConfigError("it would block on reading (not a regular file)") from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise ConfigError(f"it is larger than {max_bytes} bytes")
        return b"".join(chunks), real
    finally:
        os.close(fd)


def read_profile(path: str, *, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
    """The config file itself, with the same guards; every failure is a `ConfigError` at it."""
    try:
        return read_regular(path, max_bytes=max_bytes)[0]
    except ConfigError as exc:
        raise ConfigError(f"cannot read the config file: {exc.message}", file=path) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot read the config file: {reason}", file=path) from None


class ProfileFiles:
    """`read_file` for `parse_config`: names relative to the profile's folder.

    `confine=True`: refuse names outside the folder (the gateway). Otherwise they are read and
    recorded, as written in the config, in `outside`.
    """

    def __init__(
        self, profile: str, *, confine: bool = False, max_bytes: int = MAX_FILE_BYTES
    ) -> None:
        self.base = os.path.dirname(os.path.abspath(profile))
        self.folder = os.path.realpath(self.base)
        self.confine = confine
        self.max_bytes = max_bytes
        self.outside: list[str] = []

    def __call__(self, name: str) -> bytes:
        if name == "stdin":
            raise ConfigError("reading from stdin is not supported; give a file")
        if self.confine:
            if ".." in PurePosixPath(name).parts:
                raise ConfigError("'..' is not allowed here: files must be in the profile's folder")
            if os.path.isabs(name) and not self.inside(os.path.realpath(name)):
                raise ConfigError(
                    f"it is outside the profile's folder {self.folder}; copy it next to the profile"
                )
        full = name if os.path.isabs(name) else os.path.join(self.base, name)
        data, real = read_regular(full, max_bytes=self.max_bytes)
        if not self.inside(real):
            if self.confine:
                raise ConfigError(
                    f"it leads outside the profile's folder {self.folder} (a symbolic link?)"
                )
            if name not in self.outside:
                self.outside.append(name)
        return data

    def inside(self, real: str) -> bool:
        return _under(real, self.folder)
