"""The CLI asking a running `everlook serve` on the same data dir: its models are warm,
so an answer takes milliseconds instead of seconds of model loading."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("everlook.remote")
PAGE = 200  # the API's largest page


class ServerSaid(Exception):
    """The server answered with an error (a bad request, a missing item...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def search(
    url: str, token: str | None, params: dict[str, Any], k: int,
    upload: tuple[str, Path | None] | None = None,
) -> list[dict[str, Any]] | None:  # fmt: skip
    """Result rows as `everlook search --json` prints them, or None when the server
    cannot be reached (the caller then answers in-process)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    kind, path = upload if upload is not None else ("", None)
    data = path.read_bytes() if path is not None else None  # "image" or "audio" search
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            while len(rows) < k:
                q = {**params, "k": min(PAGE, k - len(rows))}
                if cursor:
                    q["cursor"] = cursor
                if data is not None:
                    r = client.post(f"/api/search/{kind}", params=q, files={"file": data})
                else:
                    r = client.get("/api/search", params=q)
                if r.status_code in (413, 503):
                    # Over the server's upload limit (the CLI reads files up to
                    # max_file_bytes itself), or not ready: answer in-process instead.
                    log.info("the server said %s; searching in-process", _message(r))
                    return None
                if r.status_code != 200:
                    raise ServerSaid(r.status_code, _message(r))
                page = r.json()
                rows.extend(page["results"])
                cursor = page["next_cursor"]
                if not cursor:
                    break
    except httpx.TransportError as exc:
        log.info("the server at %s did not answer (%s); searching in-process", url, exc)
        return None
    for row in rows:
        row.pop("thumbnail", None)  # the API's links; not part of the CLI's rows
        row.pop("file", None)
    return rows


def _message(r: Any) -> str:
    try:
        return str(r.json()["error"]["message"])
    except Exception:
        return f"HTTP {r.status_code}"
