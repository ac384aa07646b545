"""What every request gets below the routes: a body size limit per route, HEAD
answered wherever GET is, and a client gone mid-upload let go without a traceback.

A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``): it must see the
body as it streams in, and the response's messages as they go out."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.requests import ClientDisconnect

from usesearch.errors import UploadTooLargeError

MAX_BODY_BYTES = 64 * 2**10  # a JSON request (an audit verdict is ~100 bytes)


class Transport:
    """``limit_for(path)``: the most body bytes a request to ``path`` may send. A body
    declared larger gets a 413 before anything is read; one streamed past it stops
    the route with ``UploadTooLargeError`` (its handler answers 413)."""

    def __init__(self, app, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _json(send, 413, f"the request body is {int(declared)} bytes; the limit here is {limit}")
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise UploadTooLargeError(f"the request body is over the limit here of {limit} bytes")
            return message

        if scope["method"] == "HEAD":  # GET's answer, headers alone (Starlette's own routes do the same)
            scope = {**scope, "method": "GET"}
            inner_send = send

            async def send(message: dict) -> None:
                if message["type"] == "http.response.body":
                    message = {**message, "body": b""}
                await inner_send(message)

        try:
            await self.app(scope, limited, send)
        except ClientDisconnect:  # the client went away mid-upload: nobody is left to answer
            return


async def _json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
