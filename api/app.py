"""The FastAPI app: routes, the web page, security, and the background work it owns
(the watcher, and picking up vectors other processes added)."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from api import errors
from api.routes_items import router as items_router
from api.routes_search import router as search_router
from api.routes_stylize import router as stylize_router
from api.security import TokenAuth, UploadLimit
from api.services import Services

log = logging.getLogger("everlook.api")
STATIC = Path(__file__).resolve().parent / "static"
ENVELOPE = 64 * 1024  # multipart boundaries and form fields around an upload
# The page runs only its own scripts and styles and talks only to this server; blob:
# and data: for thumbnails fetched with a token and the inline favicon.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Background:
    """Threads the server runs beside the requests: the watcher (initial reconcile,
    then events) or the index refresher, and the style-transfer worker. All stop at
    shutdown."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.svc.worker is not None:
            self._spawn("everlook-stylize", self.svc.worker.run_forever)
        if self.svc.watcher is not None:
            self._spawn("everlook-watch", self._watch)
        else:
            # Only a reader follows the catalog: a server with a watcher holds the
            # writer lock, so every vector change comes through its own pipeline.
            self._spawn("everlook-refresh", self._refresh)

    def _spawn(self, name: str, target: object) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        t.start()
        self.threads.append(t)

    def _watch(self) -> None:
        w = self.svc.watcher
        try:
            w.start()
            w.run_forever()
        except Exception as exc:
            log.exception("the watcher stopped on an error; searches go on")
            # Said by /api/ready (503) and /api/stats, so a supervisor restarts us.
            self.svc.watch_failure = f"{type(exc).__name__}: {exc}"

    def _refresh(self) -> None:
        indexes = {name: e.index for name, e in self.svc.engines.items()}
        while not self.stop.wait(self.svc.config.refresh_seconds):
            for name, index in indexes.items():
                try:
                    r = index.refresh()
                    if r.added or r.removed:
                        log.info("%s index: picked up %d new, %d removed vectors",
                                 name, r.added, r.removed)  # fmt: skip
                except Exception:
                    log.exception("refreshing the %s index from the catalog failed", name)

    def shutdown(self) -> None:
        self.stop.set()
        if self.svc.watcher is not None:
            self.svc.watcher.stop()
        if self.svc.worker is not None:
            self.svc.worker.stop()  # a running job goes back to the queue at its next step
        for t in self.threads:
            t.join(timeout=30)


def create_app(svc: Services, background: bool = True) -> FastAPI:
    """The app over services built by the caller. background=False leaves the watcher
    and the refresher to the caller (tests drive them step by step)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        bg = Background(svc)
        if background:
            bg.start()
        try:
            yield
        finally:
            bg.shutdown()

    cfg = svc.config
    app = FastAPI(
        title="Everlook", version="0.1.0", lifespan=lifespan,
        default_response_class=errors.AsciiJSON,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN: not on a
        # self-hosted server that may be offline. The schema is at /openapi.json.
        docs_url=None, redoc_url=None,
        description="Semantic search over your images (and soon sounds). Errors always "
        'answer {"error": {"status", "code", "message"}}.',
    )  # fmt: skip
    app.state.services = svc
    errors.install(app)
    app.include_router(search_router)
    app.include_router(items_router)
    app.include_router(stylize_router)
    # Each add wraps the app so far, so the last added runs first: CORS outermost (a
    # browser then sees its headers on a 401 or a 413 too), then the upload limit (a
    # too-long body is refused before anything else), then the token.
    app.add_middleware(TokenAuth, token=cfg.token)
    app.add_middleware(UploadLimit, max_bytes=cfg.upload_max_bytes + ENVELOPE,
                       shown_limit=cfg.upload_max_bytes)  # fmt: skip
    if cfg.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(cfg.cors_origins),
            allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
        )  # fmt: skip
    if (STATIC / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        async def page() -> FileResponse:
            return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    return app
