"""Several processes opening a new catalog at once: the schema is made once, by one of
them, and every one of them then works on it (PostgreSQL: an advisory lock; SQLite: a
lock file beside the catalog)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

import migrations
from catalog import make_engine

REPO = Path(__file__).resolve().parent.parent
OPEN = """
import sys, time
from catalog import Catalog, make_engine
import migrations
engine = make_engine(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all four start together
ran = migrations.ensure_head(engine)
print("migrated" if ran else "found", Catalog(engine).stats()["items"]["total"])
"""


def open_together(url: str, n: int = 4) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVERLOOK_")}
    env["PYTHONPATH"] = str(REPO)
    start = time.time() + 4.0  # after every interpreter has imported SQLAlchemy
    procs = [
        subprocess.Popen([sys.executable, "-c", OPEN, url, str(start)], env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]  # fmt: skip
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(out.strip())
    return sorted(outs)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_processes_opening_a_new_catalog_make_its_schema_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
):
    url = (
        f"sqlite:///{tmp_path / 'new.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    assert open_together(url) == ["found 0"] * 3 + ["migrated 0"]
    engine = make_engine(url)
    assert migrations.current(engine) == migrations.head()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()


def test_a_catalog_at_head_is_opened_without_the_lock(tmp_path: Path):
    """No lock file where there is nothing to migrate: a catalog in a folder the user
    may only read opens as before."""
    db = tmp_path / "c.db"
    engine = make_engine(f"sqlite:///{db}")
    migrations.upgrade(engine)
    lock = Path(f"{db}.migrate.lock")
    lock.unlink()
    migrations.upgrade(engine)
    assert migrations.ensure_head(engine) is False
    assert not lock.exists()
    engine.dispose()


@pytest.mark.parametrize(
    ("url", "locked"),
    [
        ("sqlite:////data/c.db", "/data/c.db"),
        ("sqlite:///rel/c.db", "rel/c.db"),
        ("sqlite:///file:/data/c.db?mode=rwc&uri=true", "/data/c.db"),
        ("sqlite:///file:mem1?mode=memory&cache=shared&uri=true", None),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
    ],
)
def test_the_lock_file_sits_beside_the_file_the_engine_opens(url: str, locked: str | None):
    from sqlalchemy import create_engine

    from catalog.db import sqlite_file

    assert sqlite_file(create_engine(url)) == locked
