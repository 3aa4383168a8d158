"""Request bodies read within limits counted on the bytes actually received.

FastAPI reads any body whole, and a `Content-Length` check alone is bypassed by chunked bodies
(and by a header that lies): `BodyLimit` wraps the ASGI `receive` and stops a request once it
has sent more than its route allows; a declared length above the limit is refused before any
byte is read. `read_json_body` adds the decompressed limit for `Content-Encoding: gzip`, so a
gzip bomb is stopped after at most `limit` bytes of output.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from fastapi import HTTPException, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: at most `limit_for(method, path)` body bytes per request (None: none)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int | None]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await too_large(limit)(scope, receive, send)
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large_text(limit), headers=CLOSE)
            return message

        await self.app(scope, limited, send)


# An answer given before the body was read closes the connection: the client stops sending
# (without it, the server would read and drop the rest of the body to keep the connection).
CLOSE = {"Connection": "close"}


def _too_large_text(limit: int) -> str:
    return f"the request body is larger than this endpoint's limit of {limit:,} bytes"


def too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": _too_large_text(limit)}, status_code=413, headers=CLOSE)


async def read_json_body(request: Request, limit: int) -> bytes:
    """The body, decompressed if gzip, refused (413) once more than `limit` bytes come out."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip"):
        raise HTTPException(415, f"Content-Encoding {encoding!r} is not supported: send gzip")
    out = bytearray()
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    try:
        async for chunk in request.stream():
            if inflater is None:
                out += chunk
            else:
                out += inflater.decompress(chunk, limit + 1 - len(out))
                if inflater.unconsumed_tail:  # more would come out than the limit allows
                    raise HTTPException(
                        413, _too_large_text(limit) + " once decompressed", headers=CLOSE
                    )
            if len(out) > limit:
                raise HTTPException(
                    413,
                    _too_large_text(limit) + (" once decompressed" if inflater else ""),
                    headers=CLOSE,
                )
    except zlib.error as exc:
        raise HTTPException(400, f"the body is not valid gzip ({exc})") from None
    if inflater is not None and (not inflater.eof or inflater.unused_data):
        raise HTTPException(400, "the gzip body is truncated or has data after its end")
    return bytes(out)
