"""Who may talk to the server: loopback by default, a shared token for anything wider."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from usesearch.errors import UsesearchError

TOKEN_ENV = "USESEARCH_TOKEN"
TOKEN_COOKIE = "usesearch_token"
TOKEN_QUERY = "token"
# Host names a loopback server answers to; any other name reaching it is DNS rebinding.
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1"]


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is loopback (so only this machine can connect)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}  # the host part of each address
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if token is not None and len(token) < 16:
        raise UsesearchError(
            "the token is too short: use at least 16 characters "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
        )
    if token is None and not is_loopback(host):
        raise UsesearchError(
            f"--host {host} lets other machines connect: give a token with --token or ${TOKEN_ENV}, "
            "or keep the default --host 127.0.0.1"
        )


def presented_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get(TOKEN_QUERY) or request.cookies.get(TOKEN_COOKIE)


class TokenMiddleware(BaseHTTPMiddleware):
    """Every request, pages and pictures included, must carry the token: as a Bearer
    header (scripts), or as ``?token=`` once in the browser, which then keeps it in a
    cookie so ``<img>`` requests carry it too."""

    def __init__(self, app, token: str):
        super().__init__(app)
        self.token = token.encode()

    async def dispatch(self, request: Request, call_next) -> Response:
        given = presented_token(request)
        if given is None or not hmac.compare_digest(given.encode(), self.token):
            return JSONResponse(
                {
                    "detail": "missing or wrong token: send 'Authorization: Bearer TOKEN', "
                    "or open the page once with ?token=TOKEN"
                },
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.query_params.get(TOKEN_QUERY):
            if request.method == "GET" and request.url.path == "/":
                # The page: keep the token in the cookie and take it out of the
                # address bar (and so out of history, bookmarks and shared links).
                rest = urlencode(
                    [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != TOKEN_QUERY]
                )
                response: Response = RedirectResponse("/" + (f"?{rest}" if rest else ""), status_code=303)
            else:
                response = await call_next(request)
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict")
            return response
        return await call_next(request)


class HostCheckMiddleware(BaseHTTPMiddleware):
    """Answer only requests addressed to one of ``hosts`` (port ignored, IPv6 literals
    understood, which Starlette's TrustedHostMiddleware does not)."""

    def __init__(self, app, hosts: list[str]):
        super().__init__(app)
        self.hosts = {h.lower() for h in hosts}

    async def dispatch(self, request: Request, call_next) -> Response:
        try:
            name = urlsplit("//" + request.headers.get("host", "")).hostname
        except ValueError:
            name = None
        if name not in self.hosts:
            return JSONResponse(
                {"detail": "this server only answers requests addressed to " + ", ".join(sorted(self.hosts))},
                status_code=400,
            )
        return await call_next(request)


class SameOriginMiddleware(BaseHTTPMiddleware):
    """Refuse requests another site's page makes (403): a page on any origin can make
    the browser call a loopback server, and read nothing but still make it work.
    Browsers say where a request comes from (``Sec-Fetch-Site``, ``Origin``);
    scripts and curl send neither and pass. Following a link (a top-level
    navigation) stays allowed, so a shared search link opens.

    ``Sec-Fetch-Site``, which no page can set, is believed where a browser sends it:
    behind a reverse proxy the Host the server sees is the proxy's upstream, never
    the page's origin. Only a browser without it has ``Origin`` compared with the
    Host (or the proxy's ``X-Forwarded-Host``)."""

    async def dispatch(self, request: Request, call_next) -> Response:
        site = request.headers.get("sec-fetch-site")
        navigation = request.method == "GET" and request.headers.get("sec-fetch-mode") == "navigate"
        origin = request.headers.get("origin")
        foreign = site not in (None, "same-origin", "none") and not navigation
        if site is None and origin is not None and not navigation:  # scheme aside: a TLS proxy may sit in front
            hosts = {request.headers.get(name, "").lower() for name in ("host", "x-forwarded-host")}
            foreign = urlsplit(origin).netloc.lower() not in hosts - {""}
        if foreign:
            return JSONResponse({"detail": "cross-site requests are refused"}, status_code=403)
        return await call_next(request)


# A query read two ways: as the server splits it (on "&" only, so a value may hold ";"),
# and with ";" as a separator too, as other parsers do.
_QUERY_PAIRS = (re.compile(r"(?<=[?&])([^=&\s]*)=([^&\s]*)"), re.compile(r"(?<=[?&;])([^=&;\s]*)=([^&;\s]*)"))


def redact(text: str) -> str:
    """``?token=SECRET`` -> ``?token=REDACTED``: for anything logged. Each query
    parameter's name is decoded first, as the server decodes it, so ``%74oken=`` or
    ``to%6Ben=`` is redacted as surely as ``token=``, and its whole value goes."""

    def one(match: re.Match) -> str:
        name = match.group(1)
        return f"{name}=REDACTED" if unquote_plus(name).strip().lower() == TOKEN_QUERY else match.group(0)

    for pairs in _QUERY_PAIRS:
        text = pairs.sub(one, text)
    return text


LOGGED_CHARS = 300  # of a request's path and query: a client can send 16 KB of it per request


def logged(text: str) -> str:
    """A request line as the access log keeps it: token redacted, cut to ``LOGGED_CHARS``."""
    text = redact(text)
    return text if len(text) <= LOGGED_CHARS else f"{text[:LOGGED_CHARS]}... ({len(text)} chars)"


class RedactTokenFilter(logging.Filter):
    """Keeps the token out of uvicorn's access log (the request line carries the query),
    and a long query from filling it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(logged(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = logged(record.msg)
        return True
