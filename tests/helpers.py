"""Media the tests make themselves, and small helpers shared by the test modules."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220),
    "yellow": (240, 210, 30), "purple": (140, 40, 170), "orange": (250, 140, 20),
}  # fmt: skip


def picture(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A deterministic picture: a background gradient with a few coloured shapes."""
    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size, tuple(rng.randrange(40, 220) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randrange(8, w // 2 + 9), y0 + rng.randrange(8, h // 2 + 9)
        fill = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
    return img


def save(img: Image.Image, path: Path, fmt: str | None = None, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def jpeg_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def make_library(root: Path, n: int, start: int = 0) -> list[Path]:
    """n distinct JPEG photos under root (some in sub-folders)."""
    out = []
    for i in range(start, start + n):
        sub = root / ("a" if i % 3 else "b/c")
        out.append(save(picture(i), sub / f"img{i:03d}.jpg", quality=90))
    return out


def tone(path: Path, freq: float, seconds: float = 2.5, rate: int = 16000,
         channels: int = 1, fmt: str | None = None, noise: int = 0) -> Path:  # fmt: skip
    """A sine tone (with a little seeded noise) written by libsndfile: WAV, FLAC, OGG..."""
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    wave += 0.02 * np.random.default_rng(noise).standard_normal(len(t))
    data = np.repeat(wave[:, None], channels, axis=1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, format=fmt)
    return path


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll cond until it returns something true (returned), or fail after timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def python_alone(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter with the repo importable and no EVERLOOK_* of the
    caller's environment (what a module imports at import time shows there)."""
    repo = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVERLOOK_")}
    env["PYTHONPATH"] = str(repo)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True)  # fmt: skip


_ENGINES: dict[str, Any] = {}


def catalog_url_of(env: dict[str, str]) -> str:
    """The catalog a test's settings name (its PostgreSQL database, or the SQLite file in
    its home), as another process would open it."""
    return env.get("EVERLOOK_DATABASE_URL") or f"sqlite:///{env['EVERLOOK_HOME']}/catalog.db"


def sql(env: dict[str, str], query: str) -> list[tuple[Any, ...]]:
    """Rows of a query on the test's catalog, read from outside the process writing it;
    [] while the catalog is not there yet (no file, or not migrated). A SQLite file is
    opened read-only, so reading never creates it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    url = catalog_url_of(env)
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///") :])
        if not db.exists():
            return []
        url = f"sqlite:///file:{db}?mode=ro&uri=true"
    if url not in _ENGINES:
        _ENGINES[url] = create_engine(url, pool_pre_ping=True)
    try:
        with _ENGINES[url].connect() as c:
            return [tuple(r) for r in c.execute(text(query))]
    except SQLAlchemyError:
        return []


def sql_count(env: dict[str, str], query: str) -> int:
    rows = sql(env, query)
    return int(rows[0][0]) if rows else 0
