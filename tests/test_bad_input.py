"""Bad input is data, not a crash: each case is recorded with a reason, the run goes on,
and `everlook index` exits 1."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from indexer.media import Limits, MediaError, read_file
from tests.helpers import jpeg_bytes, make_library, picture

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


def run_index(cli: Any, lib: Path) -> tuple[int, dict[str, Any]]:
    code, summary = cli.json("index", str(lib))
    return code, summary


def failure_reason(cli: Any, path: Path) -> str:
    code, stats = cli.json("stats")
    assert code == 0
    reasons = {f["path"]: f["reason"] for f in stats["failures"] if "path" in f}
    assert str(path) in reasons, f"{path} not recorded; failures: {reasons}"
    return str(reasons[str(path)])


def check(cli: Any, lib: Path, bad: Path, reason_has: str) -> None:
    make_library(lib, 2)
    code, summary = run_index(cli, lib)
    assert code == 1
    assert summary["new"] == 2, "the good files around the bad one are indexed"
    assert [f["path"] for f in summary["failed"]] == [str(bad)]
    assert reason_has in summary["failed"][0]["reason"]
    assert reason_has in failure_reason(cli, bad)


def test_zero_byte_file(cli, tmp_path: Path):
    bad = tmp_path / "lib" / "empty.jpg"
    bad.parent.mkdir()
    bad.touch()
    check(cli, tmp_path / "lib", bad, "empty file")


def test_truncated_jpeg(cli, tmp_path: Path):
    bad = tmp_path / "lib" / "cut.jpg"
    bad.parent.mkdir()
    data = jpeg_bytes(picture(1, (640, 480)), quality=95)
    bad.write_bytes(data[: len(data) // 2])
    check(cli, tmp_path / "lib", bad, "cannot decode JPEG image")


def test_text_file_named_jpg(cli, tmp_path: Path):
    bad = tmp_path / "lib" / "notes.jpg"
    bad.parent.mkdir()
    bad.write_text("shopping list: eggs, milk\n" * 20)
    check(cli, tmp_path / "lib", bad, "not a recognised image format (content is text)")


def test_png_bomb_over_the_pixel_limit(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EVERLOOK_MAX_PIXELS", "4000000")
    bad = tmp_path / "lib" / "bomb.png"
    bad.parent.mkdir()
    # 10000 x 10000 black pixels compress to ~100 kB: a small file, a 100 MP decode.
    Image.new("1", (10000, 10000)).save(bad, optimize=True)
    assert bad.stat().st_size < 200_000
    check(cli, tmp_path / "lib", bad, "over the limit of 4000000")


def test_fifo_named_like_a_photo_does_not_hang(cli, tmp_path: Path):
    bad = tmp_path / "lib" / "y.jpg"
    bad.parent.mkdir()
    os.mkfifo(bad)
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(done=run_index(cli, tmp_path / "lib")))
    make_library(tmp_path / "lib", 2)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "indexing hung on a FIFO"
    code, summary = result["done"]
    assert code == 1 and summary["new"] == 2
    assert summary["failed"] == [{"path": str(bad), "reason": "not a regular file (a FIFO)"}]


def test_reading_a_fifo_directly_never_blocks(tmp_path: Path):
    fifo = tmp_path / "z.jpg"
    os.mkfifo(fifo)
    with pytest.raises(MediaError, match="FIFO"):
        read_file(str(fifo), Limits())


def test_broken_symlink(cli, tmp_path: Path):
    bad = tmp_path / "lib" / "link.jpg"
    bad.parent.mkdir()
    bad.symlink_to(tmp_path / "nowhere.jpg")
    check(cli, tmp_path / "lib", bad, "broken symbolic link")


def test_file_deleted_between_scan_and_read(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    lib = tmp_path / "lib"
    bad = lib / "fleeting.jpg"
    bad.parent.mkdir()
    bad.write_bytes(jpeg_bytes(picture(9)))
    import indexer.pipeline as pl

    real_scan = pl.scan

    def scan_then_delete(*a: Any, **k: Any) -> Any:
        found = list(real_scan(*a, **k))
        bad.unlink()  # gone after the scan saw it, before the reader opens it
        return iter(found)

    monkeypatch.setattr(pl, "scan", scan_then_delete)
    check(cli, lib, bad, "file vanished before it could be read")


def test_directory_named_like_a_photo_is_walked_not_read(cli, tmp_path: Path):
    lib = tmp_path / "lib"
    folder = lib / "x.jpg"
    folder.mkdir(parents=True)
    (folder / "inside.jpg").write_bytes(jpeg_bytes(picture(3)))
    code, summary = run_index(cli, lib)
    assert code == 0 and summary["new"] == 1 and summary["failed"] == []


def test_directory_appearing_where_a_file_was_scanned_is_recorded(tmp_path: Path):
    folder = tmp_path / "x.jpg"
    folder.mkdir()
    with pytest.raises(MediaError, match="is a directory"):
        read_file(str(folder), Limits())


def test_symlink_loops_are_never_followed(cli, tmp_path: Path):
    lib = tmp_path / "lib"
    make_library(lib, 2)
    (lib / "a" / "loop").symlink_to(lib)
    (lib / "self").symlink_to(lib / "self")
    code, summary = run_index(cli, lib)
    # Followed once, each folder is walked once: no copies through the loop, nothing
    # failed (a link to itself is a loop, not a broken file), the run ends cleanly.
    assert code == 0, summary
    assert (summary["new"], summary["duplicates"], summary["failed"]) == (2, 0, [])


def test_a_failed_file_that_is_fixed_is_indexed_and_its_failure_cleared(cli, tmp_path: Path):
    lib = tmp_path / "lib"
    bad = lib / "later.jpg"
    lib.mkdir()
    bad.write_text("not yet")
    assert run_index(cli, lib)[0] == 1
    bad.write_bytes(jpeg_bytes(picture(5)))
    code, summary = run_index(cli, lib)
    assert code == 0 and summary["new"] == 1
    assert cli.json("stats")[1]["failures"] == []
