"""The vector index is derived data: deleted, corrupted or stale, it is rebuilt from the
catalog on the next start, and searches give the same results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import make_library

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


def index_and_query(cli: Any, tmp_path: Path) -> tuple[Path, list[Any]]:
    lib = tmp_path / "lib"
    make_library(lib, 12)
    assert cli("index", str(lib)).exit_code == 0
    code, hits = cli.json("search", "a red circle", "-k", "5")
    assert code == 0 and len(hits) == 5
    return Path(cli_home(cli)) / "index" / "clip.faiss", hits


def cli_home(_: Any) -> str:
    import os

    return os.environ["EVERLOOK_HOME"]


@pytest.mark.parametrize(
    "damage",
    ["delete", "truncate", "garbage", "flip_a_trailing_byte", "header_disagrees", "old_format"],
)
def test_damaged_index_is_rebuilt_with_the_same_results(cli, tmp_path: Path, damage: str):
    path, before = index_and_query(cli, tmp_path)
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 4096)
    elif damage == "header_disagrees":  # the header says 13 vectors, FAISS's part holds 12
        data = path.read_bytes()
        assert b'"count": 12' in data
        path.write_bytes(data.replace(b'"count": 12', b'"count": 13'))
    elif damage == "old_format":  # format 1: magic, header length, JSON, payload
        path.write_bytes(b"EVLKFAIS" + (2).to_bytes(4, "big") + b"{}" + b"\x00" * 64)
    else:
        data = bytearray(path.read_bytes())
        data[-5] ^= 0x55
        path.write_bytes(bytes(data))
    code, after = cli.json("search", "a red circle", "-k", "5")
    assert code == 0
    assert [h["item_id"] for h in after] == [h["item_id"] for h in before]
    assert [h["score"] for h in after] == pytest.approx([h["score"] for h in before], abs=1e-5)
    assert path.exists(), "the rebuilt index is saved again"


def test_stale_index_missing_recent_vectors_is_caught_up(parts, tmp_path: Path):
    from search import vectors

    lib = tmp_path / "lib"
    make_library(lib, 6)
    parts.pipeline().run([str(lib)])
    path = parts.index.path
    stale = vectors.load("faiss", path, parts.index.info)
    ids = stale.ids()
    stale.remove(ids[:2])  # as if the process died after the catalog commit, before save
    dim = parts.index.info.dim
    stale.add([99999], np.full((1, dim), dim**-0.5, dtype=np.float32))  # unknown to the catalog
    stale.save(path)

    from everlook.settings import Settings
    from everlook.wiring import Parts

    fresh = Parts(Settings())
    report = fresh.index.open()
    assert (report.added, report.removed, report.rebuilt_because) == (2, 1, None)
    assert sorted(fresh.index.store.ids().tolist()) == sorted(ids.tolist())
