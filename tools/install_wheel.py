"""Install or uninstall our wheel into a distribution's system layout (`make install/uninstall`).

    install_wheel.py install WHEEL --destdir D --prefix /usr [--sitelib DIR] [--interpreter PY]
    install_wheel.py uninstall --destdir D --prefix /usr [--sitelib DIR]

Why not `python3 -m installer --prefix /usr`: on Debian the default sysconfig scheme is
`posix_local`, which puts a `--prefix /usr` install under /usr/local/lib/python3.X/dist-packages.
We pick the distribution's own scheme instead: Debian's `deb_system` (/usr/lib/python3/
dist-packages) where it exists and the prefix is /usr, otherwise `posix_prefix`
(/usr/lib/python3.X/site-packages on Fedora). `--sitelib` overrides both (the rpm spec passes
%{python3_sitelib}). Console scripts get `--interpreter` in their #! line (default: the Python
running this, which `make install` sets to /usr/bin/python3). No bytecode is written: the
packages compile it (dh_python3, rpm's brp-python-bytecompile).

Uninstall reads the RECORD of our installed dist-info and removes exactly those files, then the
folders left empty. Runs on the system Python alone: `installer` is python3-installer on Debian
and Fedora.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import sysconfig
from pathlib import Path
from typing import Final

DIST_NAME = "qubes_miragevpn"
SCRIPT_KIND: Final = "posix"


def scheme(prefix: str, sitelib: str | None) -> dict[str, str]:
    """The install folders for `prefix` (not yet under destdir)."""
    name = (
        "deb_system"
        if prefix == "/usr" and "deb_system" in sysconfig.get_scheme_names()
        else "posix_prefix"
    )
    paths = sysconfig.get_paths(name, vars={"base": prefix, "platbase": prefix})
    if sitelib:
        paths["purelib"] = paths["platlib"] = sitelib
    return {
        "purelib": paths["purelib"],
        "platlib": paths["platlib"],
        "headers": paths["include"],
        "scripts": paths["scripts"],
        "data": paths["data"],
    }


def rooted(destdir: str, path: str) -> Path:
    """`path` (absolute) inside `destdir`."""
    return Path(destdir) / path.lstrip("/") if destdir else Path(path)


def install(wheel: Path, destdir: str, prefix: str, sitelib: str | None, interpreter: str) -> None:
    from installer import install as install_wheel
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    paths = scheme(prefix, sitelib)
    destination = SchemeDictionaryDestination(
        paths, interpreter=interpreter, script_kind=SCRIPT_KIND, destdir=destdir or None
    )
    with WheelFile.open(wheel) as source:
        install_wheel(source, destination, additional_metadata={"INSTALLER": b"make install\n"})
    print(
        f"installed {wheel.name} into {rooted(destdir, paths['purelib'])}, scripts in "
        f"{rooted(destdir, paths['scripts'])}"
    )


def uninstall(destdir: str, prefix: str, sitelib: str | None) -> int:
    site = rooted(destdir, scheme(prefix, sitelib)["purelib"])
    infos = sorted(site.glob(f"{DIST_NAME}-*.dist-info"))
    if not infos:
        print(f"nothing to uninstall: no {DIST_NAME}-*.dist-info in {site}")
        return 0
    folders: set[Path] = set()
    for info in infos:
        with open(info / "RECORD", newline="") as f:
            for row in csv.reader(f):
                if not row:
                    continue
                # RECORD paths are relative to the site folder (scripts: ../../../bin/x)
                path = Path(os.path.normpath(site / row[0]))
                path.unlink(missing_ok=True)
                folders.add(path.parent)
                if path.suffix == ".py":
                    cache = path.parent / "__pycache__"
                    for compiled in cache.glob(f"{path.stem}.*.pyc"):
                        compiled.unlink()
                    folders.add(cache)
    # the deepest first, and never above the site folder or the scripts folder
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        while folder != site and site in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
    print(f"uninstalled {', '.join(i.name for i in infos)} from {site}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("install", "uninstall"))
    parser.add_argument("wheel", nargs="?", type=Path)
    parser.add_argument("--destdir", default="")
    parser.add_argument("--prefix", default="/usr")
    parser.add_argument("--sitelib", default=None)
    parser.add_argument("--interpreter", default=sys.executable)
    args = parser.parse_intermixed_args(argv)
    if args.action == "install":
        if args.wheel is None:
            parser.error("install needs the wheel to install")
        install(args.wheel, args.destdir, args.prefix, args.sitelib, args.interpreter)
        return 0
    return uninstall(args.destdir, args.prefix, args.sitelib)


if __name__ == "__main__":
    sys.exit(main())
