"""What the catalog is asked while indexing, watching and reporting must not cost what the
catalog holds: each statement run is explained by the database, and none may scan a big
table unless it is one of the few whole-catalog aggregates named here.

SQLite plans without statistics (Everlook never runs ANALYZE) do not depend on how many
rows the tables hold, so a small catalog shows the plans a million-item one gets. On
PostgreSQL the planner would read a small table whole however it is indexed, so its
plans are asked with sequential scans priced out (enable_seqscan off): a table read
whole all the same has no index for the statement. Its plan nodes are named as SQLite
names them ("SCAN items USING COVERING INDEX ...": an index-only walk with no bound)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from catalog.models import StageState
from catalog.results import StageOutput
from tests.helpers import make_library, picture, save

BIG = ("items", "paths", "embeddings", "stage_status", "detections", "segments", "labels")

pytestmark = pytest.mark.both_catalogs


@contextmanager
def statements(engine: Any) -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement run on engine inside the block, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        if not many and sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            seen.append((sql, params))  # a dict on PostgreSQL (named), a tuple on SQLite

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def scans(engine: Any, seen: list[tuple[str, Any]]) -> list[str]:
    """The plan lines, one per statement, of those that scan a big table or its index
    from end to end ("SCAN items ..."; a "SEARCH" is a bounded look-up)."""
    out = []
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        explain = _sqlite_plan if engine.dialect.name == "sqlite" else _postgresql_plan
        if engine.dialect.name == "postgresql":
            # As autovacuum keeps a live catalog: the visibility map set, so an index
            # holding every column asked is read without the rows (an index-only scan).
            raw.rollback()
            raw.autocommit = True
            raw.execute("VACUUM " + ", ".join(BIG))
            raw.autocommit = False
        for sql, params in seen:
            hits = [
                p for p in explain(raw, sql, params) if re.match(rf"SCAN ({'|'.join(BIG)})\b", p)
            ]
            if hits:
                out.append(" ; ".join(hits) + "  <-  " + " ".join(sql.split())[:160])
    return out


def _sqlite_plan(raw: Any, sql: str, params: Any) -> list[str]:
    return [row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, params)]


# What PostgreSQL's planner picks when tables are small and goes by indexes for big
# ones: reading a table whole, and joins that hash or sort a whole side.
PRICED_OUT = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin")


def _postgresql_plan(raw: Any, sql: str, params: Any) -> list[str]:
    """PostgreSQL's plan in SQLite's words: a sequential scan is "SCAN t", an index walk
    bounded on no index's leading column "SCAN t USING [COVERING ]INDEX i" (an "Index
    Cond" on a later column alone still reads the whole index), anything bounded a
    "SEARCH"."""
    for knob in PRICED_OUT:
        raw.execute(f"SET {knob} = off")
    try:
        (plan,) = raw.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()[0]
    finally:
        raw.rollback()
        for knob in PRICED_OUT:
            raw.execute(f"RESET {knob}")
        raw.rollback()
    lines: list[str] = []

    def bounded(node: dict[str, Any], table: str) -> bool:
        """An index condition on the leading column of one of the table's indexes (the
        planner of an empty table may walk another index with it: one that leads with
        it is there for a big table's)."""
        cond = node.get("Index Cond", "")
        return any(re.search(rf"\b{re.escape(c)}\b", cond) for c in _leading(raw, table))

    def walk(node: dict[str, Any]) -> None:
        kind, table = node["Node Type"], node.get("Relation Name")
        if table is not None:
            if kind == "Seq Scan":
                lines.append(f"SCAN {table}")
            elif kind == "Bitmap Heap Scan":  # bounded when each index it ORs is
                walks = [n for n in _below(node) if n["Node Type"] == "Bitmap Index Scan"]
                open_ = [n["Index Name"] for n in walks if not bounded(n, table)]
                if open_:
                    lines.append(f"SCAN {table} USING INDEX {open_[0]}")
                else:
                    lines.append(f"SEARCH {table} ({kind})")
            elif kind in ("Index Scan", "Index Only Scan") and not bounded(node, table):
                covering = "COVERING " if kind == "Index Only Scan" else ""
                lines.append(f"SCAN {table} USING {covering}INDEX {node['Index Name']}")
            else:
                lines.append(f"SEARCH {table} ({kind})")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return lines


def _leading(raw: Any, table: str) -> list[str]:
    """The first columns of a PostgreSQL table's indexes (expressions left out)."""
    rows = raw.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE t.relname = %s", (table,),
    ).fetchall()  # fmt: skip
    return [str(r[0]) for r in rows]


def _below(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for child in node.get("Plans", []):
        yield child
        yield from _below(child)


def sqlite(parts: Any) -> bool:
    return bool(parts.catalog.engine.dialect.name == "sqlite")


def ints(params: Any) -> list[int]:
    """A statement's integer parameters in their order (named ones on PostgreSQL)."""
    values = params.values() if isinstance(params, dict) else params
    return [p for p in values if type(p) is int]


def watched(parts: Any, fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    with statements(parts.catalog.engine) as seen:
        got = fn()
    return got, scans(parts.catalog.engine, seen)


def test_an_unchanged_re_index_scans_no_table_but_the_orphan_sweep(parts, tmp_path: Path):
    lib = tmp_path / "lib"
    make_library(lib, 6)
    parts.pipeline().run([str(lib)])
    report, full = watched(parts, lambda: parts.pipeline().run([str(lib)]))
    assert report.unchanged == 6
    # The sweep for items left without a path (a crash between a re-pointed path and
    # its prune) is the one whole-catalog read a full scan keeps: one covering index.
    assert len(full) == 1 and "NOT IN (SELECT paths.item_id" in full[0], full


def test_a_watcher_batch_scans_no_table(parts, tmp_path: Path):
    lib = tmp_path / "lib"
    photos = make_library(lib, 6)
    pipeline = parts.pipeline()
    pipeline.run([str(lib)])
    save(picture(300), photos[0], quality=90)  # new content under a known path
    save(picture(301), lib / "new.jpg", quality=90)
    photos[2].unlink()
    batch = [str(photos[0]), str(lib / "new.jpg"), str(photos[2])]
    report, full = watched(parts, lambda: pipeline.run_files(batch))
    assert (report.changed, report.new, report.removed) == (1, 1, 1)
    assert full == []


def test_stats_and_stage_progress_count_from_indexes(parts, tmp_path: Path):
    make_library(tmp_path / "lib", 4)
    parts.pipeline().run([str(tmp_path / "lib")])
    cat = parts.catalog
    stats, full = watched(parts, cat.stats)
    assert stats["items"]["total"] == 4 and stats["stages"]["embed/clip"] == {"done": 4}
    assert stats["models"] == [
        {"space": "clip", "model_id": parts.embedder.model_id, "dim": parts.embedder.dim,
         "count": 4}
    ]  # fmt: skip
    progress, more = watched(
        parts, lambda: cat.stages.progress("embed/clip", parts.embedder.model_id, ["image"], 1)
    )
    assert progress == {"done": 4, "failed": 0, "retrying": 0, "pending": 0, "total": 4}
    # Counting needs a pass over an index; never over a table's rows (a vector each).
    for line in full + more:
        assert "USING COVERING INDEX" in line, line


def test_browse_facets_read_the_date_range_from_its_index(parts, tmp_path: Path):
    make_library(tmp_path / "lib", 3)
    parts.pipeline().run([str(tmp_path / "lib")])
    facets, full = watched(parts, lambda: parts.catalog.browse.facets(0.5, 0.2))
    assert facets["kinds"] == [{"value": "image", "count": 3}]
    assert not any("taken_at" in line for line in full), full


def test_a_stage_caught_up_looks_only_at_items_added_since(parts, tmp_path: Path):
    """Once a look found nothing pending, the next starts above the highest item id of
    that look (O(new items), where each would probe every item), and still sees what
    became pending below it through this catalog: a failure to retry, a retry asked."""
    lib = tmp_path / "lib"
    make_library(lib, 5)
    pipeline = parts.pipeline()
    pipeline.run([str(lib)])
    book = parts.catalog.stages
    ids = sorted(parts.catalog.embedding_ids("clip", parts.embedder.model_id))

    def pending() -> list[int]:
        return book.pending("style", "m1", ["image"], 3, limit=100)

    assert pending() == ids
    book.save("style", "m1", {i: StageOutput() for i in ids if i != ids[1]}, {ids[1]: "boom"})
    assert pending() == [ids[1]]  # a failure with attempts left
    for _ in range(2):
        book.save("style", "m1", {}, {ids[1]: "boom"})  # attempts 2 and 3: given up
    assert pending() == []  # a whole look, once: everything is settled
    top = max(ids)
    with statements(parts.catalog.engine) as seen:
        assert pending() == []
    looks = [p for sql, p in seen if "stage_status" in sql]
    bound = ints(looks[0])[0]  # items.id > ?, the first int bound
    assert len(looks) == 1 and bound == top, "the look starts above the mark"

    save(picture(77), lib / "later.jpg", quality=90)
    pipeline.run_files([str(lib / "later.jpg")])
    new = parts.catalog.item_id_for_path(str(lib / "later.jpg"))
    assert new is not None and pending() == [new]
    book.save("style", "m1", {new: StageOutput()}, {})
    assert pending() == []
    book.retry_failed("style")  # below the mark, pending again
    assert pending() == [ids[1]]
    assert book.progress("style", "m1", ["image"], 3)["retrying"] == 1
    book.save("style", "m1", {}, {ids[1]: "boom again"})  # attempt 1 of 3 again
    assert pending() == [ids[1]], "a failure with attempts left is pending again"
    # Results are written once: a failure reported for an item another worker has
    # stored as done (both ran it) leaves the item done.
    book.save("style", "m1", {}, {ids[0]: "late failure"})
    assert book.settled("style", "m1", [ids[0]], 3) == {ids[0]}
    assert statuses_of(book, ids[0]) == "done"


def statuses_of(book: Any, item_id: int) -> str:
    from sqlalchemy import select

    from catalog.models import StageStatus

    with book.Session() as s:
        st = s.scalar(select(StageStatus.status).where(StageStatus.item_id == item_id,
                                                       StageStatus.stage == "style"))  # fmt: skip
    return str(getattr(st, "value", st))


def test_a_new_item_under_a_reused_id_is_still_pending(parts, tmp_path: Path):
    """SQLite gives a new row the highest id + 1: after the newest item is deleted, the
    next one takes its id, which a look had found settled (on PostgreSQL a new id)."""
    lib = tmp_path / "lib"
    files = make_library(lib, 3)
    pipeline = parts.pipeline()
    pipeline.run([str(lib)])
    book = parts.catalog.stages
    ids = sorted(parts.catalog.embedding_ids("clip", parts.embedder.model_id))
    book.save("style", "m1", {i: StageOutput() for i in ids}, {})
    assert book.pending("style", "m1", ["image"], 2, limit=10) == []
    newest = next(f for f in files if parts.catalog.item_id_for_path(str(f)) == ids[-1])
    newest.unlink()
    pipeline.run_files([str(newest)])
    save(picture(99), lib / "other.jpg", quality=90)
    pipeline.run_files([str(lib / "other.jpg")])
    reused = parts.catalog.item_id_for_path(str(lib / "other.jpg"))
    if sqlite(parts):  # a PostgreSQL sequence never gives an id twice
        assert reused == ids[-1]
    assert book.pending("style", "m1", ["image"], 2, limit=10) == [reused]
    assert StageState.done.value == "done"


def test_progress_leaves_out_rows_of_items_of_kinds_the_stage_does_not_take(parts):
    """A stage's rows are counted from the index, and rows of items of other kinds (left
    by an older configuration) are taken off by probing those items only."""
    from catalog.models import Item, StageStatus

    cat = parts.catalog
    with cat.Session.begin() as s:
        for i, kind in enumerate(("image", "image", "audio"), 1):
            s.add(Item(id=i, sha256=f"{i:064d}", kind=kind, size_bytes=1))
            s.flush()
            s.add(StageStatus(item_id=i, stage="style", status=StageState.done, attempts=1,
                              model_id="m1"))  # fmt: skip
    got, full = watched(parts, lambda: cat.stages.progress("style", "m1", ["image"], 3))
    assert got == {"done": 2, "failed": 0, "retrying": 0, "pending": 0, "total": 2}
    assert not any("stage_status" in line.split("<-")[0] for line in full), full


def test_a_look_that_finds_work_marks_everything_before_it_as_settled(parts, tmp_path: Path):
    """The watcher adds an item, then a look finds it: the next look starts right below
    it, not at the first item again (the look that finds nothing at all never comes
    between two new files of a busy watcher)."""
    from catalog.stages import StageBook

    lib = tmp_path / "lib"
    make_library(lib, 6)
    parts.pipeline().run([str(lib)])
    ids = sorted(parts.catalog.embedding_ids("clip", parts.embedder.model_id))
    book = StageBook(parts.catalog.Session)  # a new process's: no mark yet
    book.save("style", "m1", {i: StageOutput() for i in ids[:-1]}, {})
    assert book.pending("style", "m1", ["image"], 3, limit=10) == [ids[-1]]
    with statements(parts.catalog.engine) as seen:
        assert book.pending("style", "m1", ["image"], 3, limit=10, after=ids[-1]) == []
        assert book.pending("style", "m1", ["image"], 3, limit=10) == [ids[-1]]
    looks = [p for sql, p in seen if "stage_status" in sql]
    bound = ints(looks[1])[0]  # items.id > ?, the first int bound
    assert bound == ids[-1] - 1, "the look from the start begins at the mark"


def test_search_filters_seek_indexes_and_admit_what_they_say(parts):
    """Each filter is an index range (a date window matching 1 % of a million items
    read every item before: 0.6 s), and still admits exactly what it says: capture
    time first, else any file's time; `has` counts only confident detections."""
    from datetime import datetime, timedelta

    from catalog.filters import Filters
    from catalog.models import DetectionRow, FilePath, Item, LabelRow, SegmentRow

    day = datetime(2020, 1, 1)
    cat = parts.catalog
    with cat.Session.begin() as s:
        for i in range(1, 41):
            taken = day + timedelta(days=i) if i % 3 else None  # every third: file time
            s.add(Item(id=i, sha256=f"{i:064d}", kind="image", size_bytes=1, taken_at=taken))
            s.flush()
            mtime = int((day + timedelta(days=40 - i)).timestamp() * 1e9)
            s.add(FilePath(item_id=i, path=f"/p/{i}.jpg", size=1, mtime_ns=mtime,
                           undated=taken is None))  # fmt: skip
            for _ in range(i % 4):  # 0..3 dogs, the third one unsure
                s.add(
                    DetectionRow(
                        item_id=i,
                        stage="detect",
                        model_id="y",
                        label="dog",
                        confidence=0.9 if _ < 2 else 0.2,
                        x0=0,
                        y0=0,
                        x1=1,
                        y1=1,
                    )
                )
            if i % 5 == 0:
                for _ in range(2):  # a tag per segment: two skies, still one item
                    s.add(SegmentRow(item_id=i, stage="seg", model_id="s", label="sky",
                                     is_thing=False, area=0.5, score=1.0))  # fmt: skip
                s.add(LabelRow(item_id=i, stage="cls", model_id="c", kind="imagenet",
                               label="tabby", score=0.8, rank=1))  # fmt: skip
                s.add(LabelRow(item_id=i, stage="sty", model_id="a", kind="style",
                               label="Monet", score=0.1 * (i % 10), rank=1))  # fmt: skip
    lo, hi = day + timedelta(days=10), day + timedelta(days=20)

    def when(i: int) -> datetime:
        return day + timedelta(days=i) if i % 3 else day + timedelta(days=40 - i)

    cases = [
        (Filters(after=lo, before=hi), [i for i in range(1, 41) if lo <= when(i) < hi]),
        (Filters(after=hi), [i for i in range(1, 41) if when(i) >= hi]),
        (Filters(has=[("dog", 2)], min_confidence=0.5), [i for i in range(1, 41) if i % 4 >= 2]),
        (Filters(has=[("dog", 1)]), [i for i in range(1, 41) if i % 4]),
        (Filters(tags=["sky"], labels=["tabby"]), [i for i in range(1, 41) if i % 5 == 0]),
        (Filters(tags=["sky"]), [i for i in range(1, 41) if i % 5 == 0]),
        (Filters(styles=["Monet"], min_style=0.55), []),  # i % 5 == 0: scores 0.0 or 0.5
        (Filters(styles=["Monet"], min_style=0.45), [5, 15, 25, 35]),
        (Filters(labels=["nothing"]), []),
    ]
    for f, want in cases:
        got, full = watched(parts, lambda f=f: cat.filter_ids(f))
        assert got == want, f
        assert full == [], (f, full)


def test_the_benches_synthetic_catalog_is_dated_as_the_catalog_dates_it(tmp_path: Path):
    """bench/_synthetic.py writes rows itself: a date filter over them must admit what
    the rule says (capture time, else a file's time), or the benches time a wrong answer."""
    from datetime import datetime

    from sqlalchemy import text

    from bench._synthetic import fill_catalog
    from catalog import Catalog, make_engine
    from catalog.filters import Filters, _mtime_ns

    url = f"sqlite:///{tmp_path / 'synthetic.db'}"
    fill_catalog(url, 400, "m", dim=4, chunk=100)
    engine = make_engine(url)
    lo, hi = datetime(2014, 1, 1), datetime(2018, 1, 1)
    with engine.connect() as c:
        rows = c.execute(text("SELECT items.id, items.taken_at, paths.mtime_ns FROM items "
                              "JOIN paths ON paths.item_id = items.id")).all()  # fmt: skip
    want = sorted({
        i for i, taken, mtime in rows
        if (taken is not None and lo <= datetime.fromisoformat(str(taken)) < hi)
        or (taken is None and _mtime_ns(lo) <= mtime < _mtime_ns(hi))
    })  # fmt: skip
    assert 0 < len(want) < 400
    assert any(taken is None for _, taken, _ in rows)
    assert Catalog(engine).filter_ids(Filters(after=lo, before=hi)) == want
    engine.dispose()
