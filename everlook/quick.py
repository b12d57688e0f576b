"""The cold text query: `everlook search "words"` in a fresh process, in a fraction of a second.

A new process has ~0.6 s for the whole answer (issue [8]; rclip answers in 0.64 s here).
Measured on this project's 2-core machine, a plain import costs: SQLAlchemy ~0.45 s,
pydantic-settings ~0.2 s, torch ~1.6 s, open_clip ~2.3 s. So a plain text query with no
filters runs on what it needs and nothing else:

- the few settings it reads (:class:`QuickSettings`: the same names, defaults and `.env`
  as :class:`everlook.settings.Settings`, a test holds them equal), not pydantic;
- the catalog through :mod:`catalog.lite` (stdlib sqlite3, read-only), not SQLAlchemy;
- the text tower exported to ONNX and a tokenizer equal to open_clip's, not torch;
- the saved vector index, used only when it reflects the catalog exactly.

Whenever one of those is not so (a running server, PostgreSQL, a schema to migrate, an
index not saved since the last change, no exported text tower yet, a setting it cannot
read), it answers None and the command takes the full path, which handles every case.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PREFIX = "EVERLOOK_"


def _default_home(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "everlook"


def _raw(environ: Mapping[str, str], cwd: Path) -> dict[str, str]:
    """EVERLOOK_* values as pydantic-settings sees them: names case-insensitive, the
    process environment over `.env` in the working directory (read by python-dotenv,
    the parser pydantic-settings itself uses)."""
    found: dict[str, str] = {}
    env_file = cwd / ".env"
    if env_file.is_file():
        from dotenv import dotenv_values

        for key, value in dotenv_values(env_file, encoding="utf-8").items():
            if value is not None and key.upper().startswith(PREFIX):
                found[key.upper()[len(PREFIX) :].lower()] = value
    for key, value in environ.items():
        if key.upper().startswith(PREFIX):
            found[key.upper()[len(PREFIX) :].lower()] = value
    return found


@dataclass(frozen=True)
class QuickSettings:
    """The settings a cold text query reads; see the module docstring for why."""

    home: Path
    database_url: str | None
    negative_weight: float
    artwork_min_score: float
    clip_backend: str
    spaces: tuple[str, ...]

    @classmethod
    def read(
        cls, environ: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> QuickSettings | None:
        """The settings, or None when one cannot be read here the way Settings would
        (the full path then reads them, and reports what is wrong with them)."""
        env = os.environ if environ is None else environ
        raw = _raw(env, Path.cwd() if cwd is None else cwd)
        try:
            home = Path(raw["home"]) if raw.get("home") else _default_home(env)
            weight = float(raw.get("negative_weight", 0.5))
            artwork = float(raw.get("artwork_min_score", 0.5))
            spaces = tuple(json.loads(raw["spaces"])) if raw.get("spaces") else ("clip",)
        except (ValueError, TypeError):
            return None
        if not (0.0 <= weight <= 2.0 and 0.0 <= artwork <= 1.0) or "clip" not in spaces:
            return None
        return cls(
            home=home.expanduser(),
            database_url=raw.get("database_url") or None,
            negative_weight=weight,
            artwork_min_score=artwork,
            clip_backend=raw.get("clip_backend", "auto"),
            spaces=spaces,
        )

    @property
    def sqlite_file(self) -> Path | None:
        """The catalog's SQLite file, or None when the catalog is elsewhere."""
        if self.database_url is None:
            return self.home / "catalog.db"
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url[len("sqlite:///") :])
        return None

    @property
    def models_cache(self) -> Path:
        return self.home / "models"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"
