"""`miragevpn-config-check FILE...`: is each config usable by this client?

Exit 0 when every file is usable (with a short summary of each), 1 otherwise, with
`FILE:LINE: message` lines. `--json` prints the model (secrets redacted), `--inline OUT` writes
the self-contained config (every referenced file inlined; mode 0600, atomically).

This is the IO edge of the checker: files are read through `files.ProfileFiles` (regular files
only, never blocking, size-capped); what is shown comes from the pure `miragevpn.config.check`.
A profile is hostile until checked: by default files are confined to the profile's folder, as
the gateway reads them (`--allow-outside` reads them anyway, as `miragevpn-client` does, with a
warning; then nothing read from outside is shown or copied), and every line printed has its
control characters escaped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from miragevpn.compression import config_notes
from miragevpn.config import format_config, parse_config
from miragevpn.config.check import (
    FILE_FIELDS,
    config_document,
    format_error,
    summary,
)
from miragevpn.config.model import Config
from miragevpn.config.parse import file_references
from miragevpn.errors import ConfigError
from miragevpn.printable import printable

from .files import ProfileFiles, read_profile


@dataclass(frozen=True, slots=True)
class Checked:
    """A usable config and what the checker must not show of it."""

    config: Config
    hidden: frozenset[str]  # model fields read from files outside the profile's folder
    outside: tuple[str, ...]  # those file names, as written in the config


def check_file(path: str, *, confine: bool = True) -> Checked:
    """Parse the config at `path`; every failure is a `ConfigError` located in it."""
    data = read_profile(path)
    reader = ProfileFiles(path, confine=confine)
    try:
        config = parse_config(data, read_file=reader)
    except ConfigError as exc:
        raise exc.with_file(path) from None
    except RecursionError:
        raise ConfigError("too deeply nested", file=path) from None
    hidden = frozenset(
        FILE_FIELDS[ref.directive]
        for ref in file_references(data)
        if ref.name in reader.outside and ref.directive in FILE_FIELDS
    )
    return Checked(config, hidden, tuple(reader.outside))


def write_private(path: str, text: str) -> None:
    """Write `text` to `path` with mode 0600, atomically (temp file in the same dir + rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".miragevpn-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _say(text: str, *, err: bool = False) -> None:
    print(printable(text), file=sys.stderr if err else sys.stdout)


def _inline(path: str, checked: Checked, out: str) -> bool:
    if checked.outside:
        names = ", ".join(checked.outside)
        _say(
            f"{path}: --inline refused: the config reads {names} from outside its folder; "
            "copy the file(s) next to the profile to include them",
            err=True,
        )
        return False
    try:
        write_private(out, format_config(checked.config))
    except OSError as exc:
        _say(f"{out}: cannot write: {exc.strerror or exc}", err=True)
        return False
    if checked.config.key_passphrase is not None:
        _say(
            f"{out}: note: the key's passphrase is not written (OpenVPN reads it only from a "
            "file): add 'askpass FILE' to use it without a prompt",
            err=True,
        )
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="miragevpn-config-check",
        description="Check OpenVPN client configs: is each one usable by this client?",
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print the parsed model (redacted)")
    parser.add_argument(
        "--inline", metavar="OUT", help="write the self-contained config (one FILE only)"
    )
    parser.add_argument(
        "--allow-outside",
        action="store_true",
        help="read files outside each config's folder (as miragevpn-client does; the gateway "
        "refuses them); their content is never shown or inlined",
    )
    args = parser.parse_args(argv)
    if args.inline and len(args.files) != 1:
        parser.error("--inline takes exactly one FILE")
    status = 0
    documents: list[object] = []
    for path in args.files:
        try:
            checked = check_file(path, confine=not args.allow_outside)
        except ConfigError as exc:
            _say(format_error(exc), err=True)
            status = 1
            continue
        for name in checked.outside:
            _say(f"{path}: warning: reads {name}, outside the profile's folder", err=True)
        if args.json:
            doc = config_document(checked.config, checked.hidden)
            documents.append({"file": path, "config": doc})
        else:
            _say(f"{path}: usable")
            for line in summary(checked.config, checked.hidden):
                _say(line)
            for line in config_notes(checked.config):
                _say(f"  {line}")
        if args.inline and not _inline(path, checked, args.inline):
            status = 1
    if args.json:
        document = documents if len(args.files) > 1 else (documents or [None])[0]
        # json.dumps escapes C0 controls and (ensure_ascii) everything past ASCII; not DEL
        print(json.dumps(document, indent=2).replace("\x7f", "\\u007f"))
    return status


if __name__ == "__main__":
    sys.exit(main())
