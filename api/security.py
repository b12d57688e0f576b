"""Auth and the upload limit, as pure ASGI middleware (they run before any body is read).

- Bearer token: when one is configured, /openapi.json and every path under /api/ but
  /api/health need
  ``Authorization: Bearer <token>``, compared in constant time (hmac.compare_digest).
  The page (``/``, ``/static/...``) holds no data and loads without it, so it can ask
  the user for the token.
- Upload limit: a declared Content-Length over the limit is refused before anything is
  read; a body without one (chunked) is counted while it streams and refused (413) the
  moment it passes the limit, so a 30 MB upload never sits in memory or on disk.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body

OPEN_PATHS = ("/api/health",)
# Besides /api/...: the schema says what the API can do, which is the token holder's
# business too.
GUARDED_PATHS = ("/openapi.json",)


async def _send_error(send: Send, status: int, message: str, headers: Any = ()) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class TokenAuth:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.token is None
            or scope["type"] != "http"
            or not (scope["path"].startswith("/api/") or scope["path"] in GUARDED_PATHS)
            or scope["path"] in OPEN_PATHS
            or scope["method"] == "OPTIONS"  # CORS preflight carries no credentials
        ):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
        scheme, _, credential = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self.token):
            await self.app(scope, receive, send)
            return
        why = "this server needs a token: send Authorization: Bearer <token>"
        if given:
            why = "the token given is not this server's"
        await _send_error(send, 401, why, [(b"www-authenticate", b'Bearer realm="everlook"')])


class BodyTooLarge(HTTPException):
    """Raised from receive() mid-body; an HTTPException, so FastAPI's body parsing
    passes it on and the app's handler answers 413 in the error shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit))


class UploadLimit:
    """A declared Content-Length over the limit is refused before a byte is read; a
    body without one (chunked) is counted as it streams and refused the moment it
    passes the limit. (Starlette's own body limit answers in plain text, and replaces
    any response to an over-long declared body with its own: not our error shape.)"""

    def __init__(self, app: ASGIApp, max_bytes: int, shown_limit: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.shown_limit = shown_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name != b"content-length":
                continue
            if not value.isdigit():
                await _send_error(send, 400, "Content-Length is not a number")
                return
            if int(value) > self.max_bytes:
                await _send_error(send, 413, too_large(self.shown_limit))
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.shown_limit)
            return message

        await self.app(scope, counted, send)


def too_large(limit: int) -> str:
    return f"upload over the limit of {limit} bytes (setting upload_max_bytes)"
