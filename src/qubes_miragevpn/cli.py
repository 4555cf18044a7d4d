"""`miragevpn-client CONFIG`: connect to an OpenVPN server with an OpenVPN client config."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from miragevpn.config.keys import KeyMaterialError
from miragevpn.config.model import AuthRetry, AuthUserPass, Config, Secret
from miragevpn.config.unlock import PassphraseError, locked, with_passphrase
from miragevpn.errors import ConfigError
from miragevpn.printable import printable

from .session import engine_client_factory
from .tun import tun_name_pattern
from .unixclient import ExitCode, UnixClient

log = logging.getLogger("miragevpn-client")

DESCRIPTION = """\
Connect to an OpenVPN 2.x server using an OpenVPN client configuration file (.ovpn/.conf).

miragevpn-client reads CONFIG (certificates and keys may be inline <blocks> or files, relative
to the config file's directory), creates a tun device, performs the TLS handshake, applies what
the server pushes (addresses, routes, redirect-gateway), and carries IP packets until it is
stopped. Every change to the system (device, address, route) is logged before it is made and
undone when the client exits. It needs root (or CAP_NET_ADMIN) for the tun device and routes.

An encrypted private key (PEM or PKCS#8) or a password-protected PKCS#12 bundle is unlocked with
the first line of the config's `askpass FILE`, else with a passphrase asked on the terminal
("Enter Private Key Password:", as OpenVPN); without a terminal that is an error naming the fix.

Stop it with Ctrl-C or SIGTERM: it tells the server it is leaving (explicit-exit-notify),
removes its routes and addresses, and exits 0.
"""

EPILOG = f"""\
exit codes:
  {ExitCode.OK:d}  stopped on request (SIGTERM/SIGINT), session closed in order
  {ExitCode.CONFIG:d}  the configuration cannot be used (printed as FILE:LINE: message)
  {ExitCode.USAGE:d}  bad command line
  {ExitCode.SESSION_FAILED:d}  the session ended on an error: authentication failed, the server
     halted us, the connection retries ran out, or a one-time code was needed
     (static-challenge, or the server asked) and standard input is not a terminal
  {ExitCode.SETUP_FAILED:d}  local set-up failed (tun device or routes; are you root?)

examples:
  miragevpn-client client.ovpn
  miragevpn-client --dev tun7 -v /etc/openvpn/client/work.conf
  ip netns exec vpn miragevpn-client client.ovpn      # inside a network namespace

Secrets (keys, passwords) are never logged, at any verbosity.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="miragevpn-client",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG", type=Path, help="OpenVPN client config file")
    parser.add_argument(
        "--dev",
        metavar="NAME",
        help='tun device name (default: the config\'s "dev"; "tun" lets the kernel pick tunN)',
    )
    parser.add_argument(
        "--no-tls-ekm",
        action="store_true",
        help="do not offer TLS-EKM key derivation: data keys come from OpenVPN's TLS 1.0 PRF "
        "(for servers with a broken exporter; a server with force-tls-key-material-export "
        "then refuses us)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log debugging detail (same as --log-level debug)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="how much to log (default: info: connection steps and every system change)",
    )
    return parser


def load_config(path: Path) -> Config:
    """Parse `path`; files it names are read relative to its directory. Raises ConfigError.

    Files outside the config's folder are read (a unix client may use /etc/ssl/...) but each
    one is logged as a warning: a downloaded profile should not reach into the system.
    """
    from miragevpn.config import parse_config

    from .files import ProfileFiles, read_profile

    data = read_profile(str(path))
    reader = ProfileFiles(str(path))
    try:
        config: Config = parse_config(data, read_file=reader)
    except ConfigError as e:
        raise e.with_file(str(path)) from None
    for name in reader.outside:
        log.warning("%s: reads %r, outside the config's folder", path, name)
    return config


PASSPHRASE_PROMPT = "Enter Private Key Password: "  # OpenVPN's words (UP_TYPE_PRIVATE_KEY)
PASSPHRASE_TRIES = 3  # with auth-retry interact
ASKPASS_FIX = (
    "put the passphrase on the first line of a file (chmod 600) and add 'askpass FILE' to "
    "the config"
)


def passphrase_for(config: Config) -> Config:
    """`config` with the passphrase of its encrypted key or PKCS#12 bundle: from `askpass
    FILE` (already checked by the parser), else asked on the terminal as OpenVPN does, and
    checked at once (a wrong one ends here, before any network change). With `auth-retry
    interact` a wrong one is asked again, up to PASSPHRASE_TRIES times (OpenVPN asks again
    without a limit: init.c do_init_crypto_tls_c1)."""
    try:
        what = locked(config)
    except KeyMaterialError as exc:
        raise ConfigError(str(exc)) from None
    if what is None or config.key_passphrase is not None:
        return config
    if not sys.stdin.isatty():
        raise ConfigError(
            f"{what}, the config has no 'askpass FILE', and standard input is not a terminal "
            f"to ask on: {ASKPASS_FIX}",
            directive="askpass",
        )
    tries_left = PASSPHRASE_TRIES if config.auth_retry is AuthRetry.INTERACT else 1
    while True:  # bounded: each round uses one of tries_left
        tries_left -= 1
        passphrase = Secret(getpass.getpass(PASSPHRASE_PROMPT).encode())
        try:
            return with_passphrase(config, passphrase)
        except PassphraseError as exc:
            if tries_left <= 0:
                raise ConfigError(str(exc), directive="askpass") from None
            print(printable(f"{exc}; try again (auth-retry interact)"), file=sys.stderr)
        except KeyMaterialError as exc:
            raise ConfigError(str(exc), directive="askpass") from None


def credentials_for(config: Config) -> AuthUserPass | None:
    """Username/password for `auth-user-pass`, asking on the terminal for what is missing."""
    auth = config.auth_user_pass
    if auth is None:
        return None
    if auth.username is not None and auth.password is not None:
        return auth
    if not sys.stdin.isatty():
        raise ConfigError(
            "auth-user-pass has no file with the username and password, and standard input is "
            "not a terminal to ask on",
            directive="auth-user-pass",
        )
    username = auth.username if auth.username is not None else input("Username: ")
    password = auth.password
    if password is None:
        password = Secret(getpass.getpass("Password: ").encode())
    return replace(auth, username=username, password=password)


def print_config_error(exc: ConfigError, path: Path) -> None:
    """`FILE:LINE:COL: directive: message` on stderr, control characters escaped (the text
    may quote the profile: a downloaded one must not drive the terminal)."""
    print(printable(str(exc if exc.file else exc.with_file(str(path)))), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or ("debug" if args.verbose else "info")
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        config = passphrase_for(load_config(args.config))
        credentials = credentials_for(config)
    except ConfigError as e:
        print_config_error(e, args.config)
        return ExitCode.CONFIG
    for ignored in config.ignored:
        text = f"{ignored.name} ignored: {ignored.reason}"
        log.debug("%s:%d: %s", args.config, ignored.line, printable(text))
    for warning in config.warnings:
        text = f"{warning.directive}: {warning.message}"
        log.warning("%s:%d: %s", args.config, warning.line, printable(text))
    if not config.remotes:
        print(f"{args.config}: no `remote` to connect to", file=sys.stderr)
        return ExitCode.CONFIG

    client = UnixClient(
        config,
        client_factory=engine_client_factory(credentials, tls_ekm=not args.no_tls_ekm),
        tun_name=tun_name_pattern(args.dev or config.dev),
    )
    try:
        outcome = asyncio.run(client.run())
    except ConfigError as e:  # the engine refuses the configuration (e.g. an unusable key)
        print_config_error(e, args.config)
        return ExitCode.CONFIG
    except OSError as e:
        log.error("local set-up failed: %s", e)
        return ExitCode.SETUP_FAILED
    except KeyboardInterrupt:  # only if a signal arrived before the loop took over
        return ExitCode.OK
    log.info("exiting: %s", outcome.reason)
    return int(outcome.exit_code)


if __name__ == "__main__":
    sys.exit(main())
