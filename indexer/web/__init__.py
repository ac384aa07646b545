"""The serving stage: a search page and JSON API over an index folder (``usesearch serve``)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
from pathlib import Path

from usesearch.errors import UsesearchError

from .security import LOOPBACK_NAMES, TOKEN_ENV, RedactTokenFilter, check_bind, is_loopback

__all__ = ["MAX_K", "TOKEN_ENV", "create_app", "serve", "server_config"]


def __getattr__(name: str):
    """``create_app`` and ``MAX_K`` from ``app.py`` when first asked: importing it takes
    the models' libraries (~5 s), and ``serve`` refuses a host or port before that."""
    if name in ("create_app", "MAX_K"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


HEADER_TIMEOUT_S = 10.0  # a client must finish its request headers this fast
KEEP_ALIVE_S = 5  # an idle kept-alive connection closes after this
MAX_CONNECTIONS = 64  # beyond this, new requests get 503 at once
MAX_PER_CLIENT = 24  # connections one address may hold: one client alone cannot reach MAX_CONNECTIONS


def _client_key(address: str) -> str:
    """Who a connection counts against: an IPv4 address, or an IPv6 /64 (one host
    commonly holds a whole /64); an IPv4-mapped IPv6 address as its IPv4 one."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


def _header_timeout_protocol(timeout: float, per_client: int = MAX_PER_CLIENT):
    """uvicorn's h11 protocol with a deadline for request headers (uvicorn has none,
    so a client that never finishes its headers would hold a connection forever) and
    a cap on the connections one address holds, checked as a connection opens, before
    any request or token: renewing unfinished headers from one machine (slowloris)
    would otherwise fill the global cap and turn every request into a 503. Behind a
    reverse proxy every connection comes from the proxy: limit per client there."""
    from collections import Counter

    from uvicorn.protocols.http.h11_impl import H11Protocol

    held: Counter = Counter()  # open connections per client address, across this server's protocols

    class HeaderTimeoutProtocol(H11Protocol):
        def _arm_header_deadline(self) -> None:
            self._cycle_at_arm = self.cycle
            self._header_deadline = self.loop.call_later(timeout, self._header_deadline_passed)

        def _header_deadline_passed(self) -> None:
            # No new request started since the deadline was armed: headers never came.
            if self.cycle is self._cycle_at_arm and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            self._client = _client_key(peer[0]) if isinstance(peer, tuple) and peer else None
            held[self._client] += 1
            self._arm_header_deadline()
            if per_client and held[self._client] > per_client:
                transport.close()  # this address holds its share already

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._header_deadline.cancel()
            self._arm_header_deadline()  # the next request on this connection gets its own

        def connection_lost(self, exc) -> None:
            self._header_deadline.cancel()
            held[self._client] -= 1
            if held[self._client] <= 0:
                del held[self._client]
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def server_config(
    app, host: str, port: int, header_timeout: float = HEADER_TIMEOUT_S, per_client: int = MAX_PER_CLIENT
):
    """uvicorn's settings for the app: time limits and a connection bound, and an
    access log with any token redacted."""
    import logging

    import uvicorn

    logging.getLogger("uvicorn.access").addFilter(RedactTokenFilter())
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        lifespan="off",  # the app has no startup or shutdown handlers; with them on, Ctrl-C logged a traceback
        http=_header_timeout_protocol(header_timeout, per_client),
        timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=MAX_CONNECTIONS,
        h11_max_incomplete_event_size=16 * 1024,
    )


def serve(
    db_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    db_url: str | None = None,
    device: str | None = None,
    faiss_device: str | None = None,
    per_client: int | None = None,  # None: MAX_PER_CLIENT
) -> None:
    """Open the index, load its model once, and answer until interrupted."""
    token = token or os.environ.get(TOKEN_ENV) or None
    check_bind(host, token)  # before the models' libraries load (~5 s) and the model: a refusal is instant
    check_port(host, port)  # so is a port in use
    # Seconds pass before uvicorn's first line (the libraries, the model): said, not silent.
    print(f"opening the index at {db_dir} and loading its model ...", file=sys.stderr, flush=True)
    import uvicorn

    from ..search import SegmentIndex
    from .app import create_app

    index = SegmentIndex.open(
        Path(db_dir), db_url=db_url, device=device, faiss_device=faiss_device, locations="background"
    )  # a server answers many searches: candidates' locations are held in memory once built
    try:
        allowed_hosts = [*LOOPBACK_NAMES, host] if is_loopback(host) else None
        server = uvicorn.Server(
            server_config(
                create_app(index, token, allowed_hosts),
                host,
                port,
                per_client=MAX_PER_CLIENT if per_client is None else per_client,
            )
        )
        server.run()
        # uvicorn stops on a SIGINT, then raises it again under the handler it found: one
        # that ignores it (a shell's background job) made the stop a success, exit 0.
        if signal.SIGINT in getattr(server, "_captured_signals", ()):
            raise KeyboardInterrupt
    finally:
        index.close()


def check_port(host: str, port: int) -> None:
    """Refuse a port that cannot be listened on before the model loads (uvicorn said so
    in five log lines, after the load, and exited 3): a trial bind at each address the
    host names, let go at once. uvicorn then binds as it always does (every address of a
    host name, IPv6 only on IPv6, its startup line with the URL)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsesearchError(f"--host {host}: {exc.strerror or exc}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as trial:
            trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a restart needs no wait
            if family == socket.AF_INET6:
                trial.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                trial.bind(address)
            except OSError as exc:
                taken = "; another program listens there: give another --port" if exc.errno == errno.EADDRINUSE else ""
                raise UsesearchError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{taken}") from None
