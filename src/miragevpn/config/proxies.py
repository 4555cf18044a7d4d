"""`http-proxy`, `http-proxy-option`, `http-proxy-user-pass` and `socks-proxy`.

Grammar and checks as in OpenVPN 2.6 (options.c `add_option`, `options_postprocess_verify_ce`;
proxy.c `http_proxy_new`; socks.c):

    http-proxy SERVER PORT [AUTHFILE|auto|auto-nct] [AUTH-METHOD]
        no AUTHFILE: no authentication; with AUTHFILE the method defaults to basic.
        AUTHFILE "" with an <http-proxy-user-pass> block: the credentials are inline.
        Supported here: none, basic. Not here: ntlm, ntlm2 (OpenVPN's NTLM is deprecated),
        auto/auto-nct (detecting the method, digest, asking on stdin/management).
    http-proxy-user-pass FILE | <http-proxy-user-pass>   (overrides AUTHFILE, as in proxy.c)
    http-proxy-option VERSION v | AGENT text | CUSTOM-HEADER (EXT1, EXT2) name [content]
        at most 10 custom headers (MAX_CUSTOM_HTTP_HEADER).
    socks-proxy SERVER [PORT [AUTHFILE]]   (PORT defaults to 1080)
        Extension: AUTHFILE may be `[inline]` with a <socks-proxy> block, so that
        `format_config` can write a self-contained file (OpenVPN 2.6 has no inline form).

Credentials files: the user name on the first line, the password on the second (both needed).
Handlers record raw settings; `build` (called by resolve.py) reads the credentials (only the
file that counts is read, as OpenVPN does) and checks the combination:
- http-proxy and socks-proxy exclude each other; extra http-proxy options need http-proxy;
- a proxy carries TCP only (the remotes must be tcp; SOCKS5 UDP ASSOCIATE is not offered);
- <connection> blocks: the proxy each block ends up with (the settings outside the blocks
  and its own) must be the same for every block: one proxy per config here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ..errors import ConfigError
from .context import INLINE_MARKER, MAX_FILE_BYTES, Context, Setting, bad_arg, error
from .credentials import user_and_password
from .lexer import Directive
from .model import HttpProxy, Proxy, ProxyCredentials, Remote, Secret, SocksProxy, Transport
from .values import port

MAX_CUSTOM_HTTP_HEADER = 10  # proxy.h
SOCKS_DEFAULT_PORT = 1080  # options.c
SOCKS_MAX_FIELD = 255  # RFC 1929: user name and password are 1..255 bytes
KEYS = frozenset({"http_proxy", "http_proxy_option", "http_proxy_user_pass", "socks_proxy"})

_AUTO = ("auto", "auto-nct")
_NTLM = ("ntlm", "ntlm2")


@dataclass(frozen=True, slots=True)
class CredentialsSource:
    """Where credentials come from: a file name, or the text of an inline block."""

    file: str | None = None
    inline: str | None = field(default=None, repr=False)  # the user name and password


@dataclass(frozen=True, slots=True)
class RawHttpProxy:
    host: str
    port: int
    auth: CredentialsSource | None  # None: method none; else basic from this source
    empty_authfile: bool = False  # `http-proxy H P "" basic`: http-proxy-user-pass required


@dataclass(frozen=True, slots=True)
class RawSocksProxy:
    host: str
    port: int
    auth: CredentialsSource | None


def _host(d: Directive) -> str:
    host = d.args[0].text
    if not host or any(c.isspace() or ord(c) < 32 for c in host):
        raise bad_arg(d, 0, "not a host name or address")
    return host


def h_http_proxy(ctx: Context, d: Directive) -> None:
    if len(d.args) < 2:
        raise error(d, "the HTTP proxy's port is missing (http-proxy SERVER PORT)")
    host, proxy_port = _host(d), port(d, 1)
    if len(d.args) < 3:
        ctx.put(d, "http_proxy", RawHttpProxy(host, proxy_port, None))
        return
    authfile = d.args[2].text
    if authfile in _AUTO:
        raise bad_arg(
            d,
            2,
            "detecting the proxy's authentication method (digest, NTLM) and asking for "
            "credentials is not supported here; give a credentials file (basic "
            "authentication) or an <http-proxy-user-pass> block with '\"\" basic'",
        )
    method = d.args[3].text if len(d.args) > 3 else "basic"
    if method in _NTLM:
        raise bad_arg(d, 3, "NTLM proxy authentication is not supported here (only basic)")
    if method == "digest":
        raise bad_arg(
            d, 3, "digest is not an auth-method OpenVPN 2.6 takes here, and not supported here"
        )
    if method not in ("none", "basic"):
        raise bad_arg(d, 3, "unknown HTTP proxy auth-method (OpenVPN 2.6: none, basic, ntlm2)")
    if method == "none":
        ctx.put(d, "http_proxy", RawHttpProxy(host, proxy_port, None))
        return
    if authfile == "stdin":
        raise bad_arg(
            d, 2, "asking for proxy credentials is not supported; put them in a file or block"
        )
    source = CredentialsSource(file=authfile) if authfile else None
    ctx.put(d, "http_proxy", RawHttpProxy(host, proxy_port, source, empty_authfile=not authfile))


def h_http_proxy_user_pass(ctx: Context, d: Directive) -> None:
    if d.inline is not None:
        ctx.put(d, "http_proxy_user_pass", CredentialsSource(inline=d.inline))
        return
    if len(d.args) != 1:
        raise error(d, "takes one file name (or an inline <http-proxy-user-pass> block)")
    if d.args[0].text == INLINE_MARKER:
        block = ctx.inline_blocks.get(d.name)
        if block is None or block.inline is None:
            raise error(d, f"says {INLINE_MARKER} but the file has no <{d.name}> block", 0)
        ctx.put(d, "http_proxy_user_pass", CredentialsSource(inline=block.inline))
        return
    if not d.args[0].text:
        raise error(d, "the credentials file name is empty", 0)
    ctx.put(d, "http_proxy_user_pass", CredentialsSource(file=d.args[0].text))


def _header_text(d: Directive, arg: int) -> str:
    text = d.args[arg].text
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise bad_arg(d, arg, "control characters cannot go into an HTTP header")
    return text


def h_http_proxy_option(ctx: Context, d: Directive) -> None:
    kind, n = d.args[0].text, len(d.args)
    if kind == "VERSION" and n == 2:
        version = d.args[1].text
        if version not in ("1.0", "1.1"):
            raise bad_arg(d, 1, "the HTTP version is 1.0 (the default) or 1.1")
        ctx.put(d, "http_proxy_option", ("VERSION", version))
    elif kind == "AGENT" and n == 2:
        ctx.put(d, "http_proxy_option", ("AGENT", _header_text(d, 1)))
    elif kind in ("CUSTOM-HEADER", "EXT1", "EXT2") and n >= 2:
        name = _header_text(d, 1)
        if not name:
            raise bad_arg(d, 1, "empty header name")
        content = _header_text(d, 2) if n == 3 else None
        ctx.put(d, "http_proxy_option", ("CUSTOM-HEADER", (name, content)))
    else:
        raise error(
            d,
            "expected VERSION v, AGENT text or CUSTOM-HEADER name [content] (OpenVPN 2.6: "
            "bad http-proxy-option or missing or extra parameter)",
        )


def h_socks_proxy(ctx: Context, d: Directive) -> None:
    if d.inline is not None:
        raise error(d, "give the credentials as 'socks-proxy SERVER PORT [inline]' with this block")
    host = _host(d)
    proxy_port = port(d, 1) if len(d.args) > 1 else SOCKS_DEFAULT_PORT
    auth: CredentialsSource | None = None
    if len(d.args) > 2:
        authfile = d.args[2].text
        if authfile == INLINE_MARKER:
            block = ctx.inline_blocks.get(d.name)
            if block is None or block.inline is None:
                raise error(d, f"says {INLINE_MARKER} but the file has no <{d.name}> block", 2)
            auth = CredentialsSource(inline=block.inline)
        elif authfile == "stdin":
            raise bad_arg(d, 2, "asking for proxy credentials is not supported; use a file")
        elif not authfile:
            raise bad_arg(d, 2, "empty credentials file name")
        else:
            auth = CredentialsSource(file=authfile)
    ctx.put(d, "socks_proxy", RawSocksProxy(host, proxy_port, auth))


# --------------------------------------------------------------------------- resolving


def _fail(s: Setting, message: str) -> ConfigError:
    return ConfigError(message, line=s.line, column=s.column, directive=s.directive)


def _credentials(ctx: Context, s: Setting, source: CredentialsSource) -> ProxyCredentials:
    """The user name and password from a file or block; errors name `s`'s line."""
    if source.inline is not None:
        data = source.inline.encode()
    else:
        assert source.file is not None
        try:
            data = ctx.read_file(source.file)
        except ConfigError as exc:
            message = f"cannot read the proxy credentials '{source.file}': {exc.message}"
            raise _fail(s, message) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise _fail(s, f"cannot read the proxy credentials '{source.file}': {reason}") from None
        if len(data) > MAX_FILE_BYTES:
            raise _fail(s, f"the proxy credentials file is larger than {MAX_FILE_BYTES} bytes")
    try:
        username, password = user_and_password(data)
    except UnicodeDecodeError:
        raise _fail(s, "the proxy credentials are not UTF-8 text") from None
    if not username or not password:
        raise _fail(
            s, "the proxy credentials need the user name on line 1 and the password on line 2"
        )
    return ProxyCredentials(username, Secret(password.encode()))


def _build_one(ctx: Context, settings: list[Setting]) -> Proxy | None:
    """The proxy these settings describe (in config order), or None."""
    http = [s for s in settings if s.key == "http_proxy"]
    socks = [s for s in settings if s.key == "socks_proxy"]
    others = [s for s in settings if s.key in ("http_proxy_option", "http_proxy_user_pass")]
    if http and socks:
        later, earlier = (
            max(http[-1], socks[-1], key=lambda s: s.line),
            min(http[-1], socks[-1], key=lambda s: s.line),
        )
        raise _fail(
            later,
            f"http-proxy can not be used together with socks-proxy (line {earlier.line})",
        )
    if socks:
        s = socks[-1]
        raw_socks = s.value
        assert isinstance(raw_socks, RawSocksProxy)
        creds = None
        if raw_socks.auth is not None:
            creds = _credentials(ctx, s, raw_socks.auth)
            if max(len(creds.username.encode()), len(creds.password.value)) > SOCKS_MAX_FIELD:
                raise _fail(s, "SOCKS user name and password are at most 255 bytes each")
        return SocksProxy(raw_socks.host, raw_socks.port, creds)
    if not http:
        if others:
            raise _fail(others[0], "http-proxy not specified but other http proxy options present")
        return None
    s = http[-1]
    raw = s.value
    assert isinstance(raw, RawHttpProxy)
    proxy = HttpProxy(raw.host, raw.port)
    user_pass = [o for o in others if o.key == "http_proxy_user_pass"]
    if raw.auth is not None or raw.empty_authfile:
        if user_pass:  # overrides the AUTHFILE (proxy.c get_user_pass_http)
            source = user_pass[-1].value
            assert isinstance(source, CredentialsSource)
            proxy = replace(proxy, credentials=_credentials(ctx, user_pass[-1], source))
        elif raw.auth is not None:
            proxy = replace(proxy, credentials=_credentials(ctx, s, raw.auth))
        else:
            raise _fail(s, 'the auth file is "": add an <http-proxy-user-pass> block')
    elif user_pass:
        ctx.warn_setting(
            user_pass[-1],
            "no effect: http-proxy names no auth file, so no credentials are sent (as in "
            "OpenVPN); use 'http-proxy SERVER PORT \"\" basic'",
        )
    headers: list[tuple[str, str | None]] = []
    for o in others:
        if o.key != "http_proxy_option":
            continue
        option = o.value
        assert isinstance(option, tuple) and len(option) == 2
        kind, value = option
        if kind == "VERSION":
            assert isinstance(value, str)
            proxy = replace(proxy, version=value)
        elif kind == "AGENT":
            assert isinstance(value, str)
            proxy = replace(proxy, agent=value)
        else:
            if len(headers) >= MAX_CUSTOM_HTTP_HEADER:
                raise _fail(o, f"at most {MAX_CUSTOM_HTTP_HEADER} CUSTOM-HEADER options")
            assert isinstance(value, tuple)
            headers.append(value)
    return replace(proxy, custom_headers=tuple(headers))


def build(ctx: Context, remotes: Iterable[Remote]) -> Proxy | None:
    """The config's proxy (see the module doc), checked against the remotes."""
    settings = [s for s in ctx.settings if s.key in KEYS]
    if not settings:
        return None
    outside = [s for s in settings if s.connection is None]
    blocks = sorted({s.connection for s in ctx.settings if s.connection is not None})
    proxy = _build_one(ctx, outside)
    if any(s.connection is not None for s in settings):
        chosen: dict[int, Proxy | None] = {}
        for block in blocks:
            own = [s for s in settings if s.connection == block]
            chosen[block] = _build_one(ctx, outside + own) if own else proxy
        if len(set(chosen.values())) > 1:
            first = next(s for s in settings if s.connection is not None)
            raise _fail(
                first,
                "a different proxy per <connection> block is not supported here; give the same "
                "proxy in every block, or one proxy outside the blocks",
            )
        proxy = chosen[blocks[0]]
    if proxy is None:
        return None
    where = settings[-1]
    for remote in remotes:
        if remote.proto.transport is not Transport.TCP:
            kind = "http-proxy" if isinstance(proxy, HttpProxy) else "socks-proxy"
            extra = " (SOCKS5 UDP ASSOCIATE is not offered here)" if kind == "socks-proxy" else ""
            raise _fail(
                where,
                f"{kind} carries TCP only: remote {remote.host} uses UDP{extra}; use "
                "'proto tcp-client'",
            )
    return proxy
