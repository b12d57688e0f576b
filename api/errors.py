"""One error shape for every response that is not a success:

    {"error": {"status": 404, "code": "not_found", "message": "no item with id 7"}}

Validation errors add "details"; an unexpected exception is logged with its traceback
and the client gets only "internal error" (never a stack trace)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("everlook.api")

CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "unprocessable", 429: "too_many_requests",
    500: "internal", 501: "not_implemented", 503: "unavailable",
}  # fmt: skip


class AsciiJSON(JSONResponse):
    """JSON with non-ASCII escaped. A file name that is not UTF-8 is a str with PEP 383
    surrogates (``\\udce9``); escaped, it travels as valid JSON that Python's json and
    JavaScript's JSON.parse read back exactly (and os.fsencode turns into the original
    bytes), where UTF-8 encoding would fail and turn the answer into a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")  # fmt: skip


class ApiError(Exception):
    """Raised by routes; becomes the error shape with this status and message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"status": status, "code": CODES.get(status, "error"), "message": message,
                      **extra}}  # fmt: skip


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return AsciiJSON(error_body(status, message, **extra), status, headers=headers)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ())]
        # "input" may hold the whole (binary) body: never echo it back.
        out.append({"where": ".".join(loc), "problem": str(e.get("msg", "invalid"))})
    return out


def _allowed(req: Request) -> str:
    """Every method some route answers at this path. Starlette's 405 names only the first
    route that matched the path, so a collection with GET and POST (/api/stylize) would
    say Allow: POST alone."""
    methods: set[str] = set()
    routes = list(req.app.routes)
    while routes:
        route = routes.pop()
        # FastAPI keeps an included router as one entry; its routes are the router's own
        # (our routers are included without a prefix, so their paths are the full ones).
        inner = getattr(route, "original_router", None)
        if inner is not None:
            routes.extend(inner.routes)
            continue
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(req.url.path) and getattr(route, "methods", None):
            methods |= set(route.methods)
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else CODES.get(exc.status_code, "")
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405 and (allowed := _allowed(req)):
            headers = {**(headers or {}), "Allow": allowed}
        return error_response(exc.status_code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        first = details[0] if details else {"where": "request", "problem": "invalid"}
        message = f"{first['where']}: {first['problem']}"
        return error_response(422, message, details=details)

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", req.method, req.url.path)
        return error_response(500, "internal error (the server log has the details)")
