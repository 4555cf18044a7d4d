"""Which profile the gateway runs: the `.ovpn` in the config folder, its side files, credentials.

The folder is the qube's persistent `/rw/config/qubes-miragevpn/` (`--config-dir`). The choice:

    selection set    /vm-config/miragevpn-profile (qvm-features sys-vpn
                     vm-config.miragevpn-profile work.ovpn) names the file; `work` finds
                     `work.ovpn` or `work.conf` too
    no selection     the one `.ovpn`/`.conf` file in the folder
    otherwise        blocked: no profile, several and none chosen, the chosen one missing

The profile and every file it names are read through `read_file(name) -> bytes`, which
resolves names against the folder and refuses anything outside it: by default the runtime's
`qubes_miragevpn.files.ProfileFiles` confined to the folder (`confined_reader`). Files holding
secrets (the `auth-user-pass` file, `key`, `pkcs12`, `secret`, `tls-auth`, `tls-crypt`,
`tls-crypt-v2`, or the profile itself when it carries them inline) must not be readable by other
users (mode 0600 or stricter). The gateway cannot ask for a password, so `auth-user-pass` needs
a complete file, and an encrypted `key` or a protected `pkcs12` needs `askpass FILE` (the
passphrase on the file's first line, checked when the profile is parsed).

`load_profile()` never raises for the user's mistakes: it returns a `LoadedProfile`, or a
`ProfileBlocked` whose `reason` says what is wrong and what to do.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from miragevpn.config import parse_config
from miragevpn.config.context import INLINE_MARKER
from miragevpn.config.lexer import decode_config, lex
from miragevpn.config.model import AuthUserPass, Config
from miragevpn.config.unlock import locked
from miragevpn.errors import ConfigError
from miragevpn.printable import printable

from ..files import ProfileFiles

DEFAULT_CONFIG_DIR = Path("/rw/config/qubes-miragevpn")
PROFILE_SUFFIXES = (".ovpn", ".conf")
SECRET_DIRECTIVES = (
    "askpass",
    "auth-user-pass",
    "key",
    "pkcs12",
    "secret",
    "tls-auth",
    "tls-crypt",
    "tls-crypt-v2",
)
SELECT_HINT = "choose one in dom0: qvm-features <this qube> vm-config.miragevpn-profile NAME"

ReadFile = Callable[[str], bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedProfile:
    """A profile the gateway can run."""

    name: str  # the file name in the folder, e.g. "work.ovpn"
    path: Path
    config: Config
    credentials: AuthUserPass | None  # complete (username and password), or None when unused
    notes: tuple[str, ...] = ()  # ignored directives and warnings, for the log


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileBlocked:
    """No usable profile: the gateway stays blocked, and says why (and what to do)."""

    reason: str
    name: str | None = None  # the profile concerned, when one was chosen


ProfileResult = LoadedProfile | ProfileBlocked


def confined_reader(config_dir: Path) -> ReadFile:
    """`read_file` for names relative to `config_dir`, refusing anything outside it."""
    # ProfileFiles takes a profile's path and works in its folder: any name in it will do.
    return ProfileFiles(str(config_dir / "profile.ovpn"), confine=True)


def load_profile(
    config_dir: Path, selection: str | None, *, read_file: ReadFile | None = None
) -> ProfileResult:
    """The profile to run, from `config_dir` and the selection (None or '' = not set)."""
    if read_file is None:
        read_file = confined_reader(config_dir)
    chosen = choose_profile(config_dir, selection)
    if isinstance(chosen, ProfileBlocked):
        return chosen
    name = chosen
    path = config_dir / name
    where = str(path)
    try:
        data = read_file(name)
        config = parse_config(data, read_file=read_file)
    except ConfigError as exc:
        located = exc if exc.file else exc.with_file(where)
        return ProfileBlocked(reason=printable(f"the profile cannot be used: {located}"), name=name)
    except OSError as exc:
        return ProfileBlocked(reason=f"cannot read {where}: {exc.strerror or exc}", name=name)
    exposed = exposed_secrets(config_dir, name, data)
    if exposed:
        return ProfileBlocked(reason=exposed, name=name)
    auth = config.auth_user_pass
    if auth is not None and (auth.username is None or auth.password is None):
        missing = "a username and password" if auth.username is None else "a password"
        return ProfileBlocked(
            reason=(
                f"{where}: auth-user-pass needs {missing}, and the gateway cannot ask for them: "
                "put the username on line 1 and the password on line 2 of a file next to the "
                "profile, chmod 600 it, and name it: auth-user-pass FILE"
            ),
            name=name,
        )
    what = locked(config)  # the profile parsed, so its key material decodes
    if what is not None and config.key_passphrase is None:
        return ProfileBlocked(
            reason=(
                f"{where}: {what}, and the gateway cannot ask for its passphrase: put the "
                "passphrase on the first line of a file next to the profile, chmod 600 it, and "
                "add to the profile: askpass FILE"
            ),
            name=name,
        )
    notes = tuple(
        printable(note)
        for note in [f"{where}:{i.line}: {i.name}: ignored ({i.reason})" for i in config.ignored]
        + [f"{where}:{w.line}: {w.directive}: {w.message}" for w in config.warnings]
    )
    return LoadedProfile(name=name, path=path, config=config, credentials=auth, notes=notes)


def choose_profile(config_dir: Path, selection: str | None) -> str | ProfileBlocked:
    """The file name of the profile to use, or why there is none."""
    try:
        entries = sorted(os.listdir(config_dir))
    except FileNotFoundError:
        return ProfileBlocked(
            reason=f"the profile folder {config_dir} does not exist: create it and put the "
            "VPN provider's .ovpn file there"
        )
    except OSError as exc:
        return ProfileBlocked(reason=f"cannot list {config_dir}: {exc.strerror or exc}")
    profiles = [e for e in entries if _is_profile_name(e) and _is_file(config_dir / e)]
    if selection:
        if "/" in selection or selection.startswith("."):
            return ProfileBlocked(
                reason=f"vm-config.miragevpn-profile is {selection!r}: name a file in "
                f"{config_dir}, without '/'"
            )
        for candidate in (selection, *(selection + s for s in PROFILE_SUFFIXES)):
            if candidate in entries and _is_file(config_dir / candidate):
                if not _is_profile_name(candidate):
                    return ProfileBlocked(
                        reason=f"vm-config.miragevpn-profile names {candidate}, which is not "
                        "a profile (.ovpn or .conf)",
                        name=candidate,
                    )
                return candidate
        there = ", ".join(profiles) if profiles else "none"
        return ProfileBlocked(
            reason=f"vm-config.miragevpn-profile names {selection!r}, which is not in "
            f"{config_dir} (profiles there: {there})",
            name=selection,
        )
    if not profiles:
        return ProfileBlocked(
            reason=f"no profile in {config_dir}: put the VPN provider's .ovpn file there"
        )
    if len(profiles) > 1:
        return ProfileBlocked(
            reason=f"{len(profiles)} profiles in {config_dir} ({', '.join(profiles)}) and none "
            f"chosen: {SELECT_HINT}"
        )
    return profiles[0]


def exposed_secrets(config_dir: Path, name: str, data: bytes) -> str | None:
    """Why secrets are readable by other users, or None when every secret file is 0600.

    `data` is the profile's content (already parsed once, so it lexes).
    """
    directives = lex(decode_config(data))
    inline = any(d.inline is not None and d.name in SECRET_DIRECTIVES for d in directives)
    files: list[tuple[str, str]] = (
        [(name, "the profile (it holds secrets inline)")] if inline else []
    )
    for d in directives:
        if d.name in SECRET_DIRECTIVES and d.inline is None and d.args:
            file = d.args[0].text
            if file and file != INLINE_MARKER:
                files.append((file, f"the {d.name} file"))
    problems: list[str] = []
    exposed: list[str] = []
    for file, what in files:
        path = Path(file) if os.path.isabs(file) else config_dir / file
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue  # it was read a moment ago; a race is not ours to report here
        if mode & 0o077:
            problems.append(f"{what} {path} is readable by other users (mode {mode:04o})")
            if str(path) not in exposed:
                exposed.append(str(path))
    if not problems:
        return None
    return "; ".join(problems) + f": run chmod 600 {' '.join(exposed)}"


def profile_loader(
    config_dir: Path, selection: Callable[[], str | None], *, read_file: ReadFile | None = None
) -> Callable[[], ProfileResult]:
    """`load_profile` with the current selection, as the daemon calls it on each (re)start."""

    def load() -> ProfileResult:
        return load_profile(config_dir, selection(), read_file=read_file)

    return load


def _is_profile_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(PROFILE_SUFFIXES)


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
