"""Meaning of the enrichment stages end to end, through the CLI, with the demo models:
the trained demo YOLO (`--has star`, counts) and the demo world's five drawing styles
standing in for artists (`--style`), exactly as `make demo` configures them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, catalog_setting, only_these_settings
from tools import demo as demo_tool
from tools import synthworld

pytestmark = pytest.mark.slow
NAME = re.compile(r"^(?:(?P<style>[a-z-]+)-)?(?P<count>\d)-(?P<colour>[a-z]+)-(?P<shape>[a-z]+)-")
SHAPE_WORDS = {w: s for s in synthworld.SHAPES for w in (s, synthworld.plural(s, 2))}


def facts(path: str) -> dict[str, Any]:
    m = NAME.match(Path(path).name)
    assert m, path
    style = (m.group("style") or "").replace("line-art", "line art") or None
    return {"style": style, "count": int(m.group("count")),
            "shape": SHAPE_WORDS[m.group("shape")]}  # fmt: skip


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])  # every test on both
def demo(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Cli, list[Path]]]:
    base = tmp_path_factory.mktemp("demo-enrich")
    with pytest.MonkeyPatch.context() as mp:
        only_these_settings(mp, {
            "EVERLOOK_HOME": str(base / "home"), "EVERLOOK_DEVICE": "cpu",
            **demo_tool.demo_settings(), "EVERLOOK_SPACES": '["clip"]',
            **catalog_setting(request),
        })  # fmt: skip
        lib = base / "lib"
        demo_tool.build_library(lib, per_pair=2, per_style=8, per_sound=0)
        cli = Cli()
        code, summary = cli.json("index", str(lib))
        assert code == 0, summary
        assert summary["stages"]["done"] == {"detect/yolo": 136, "style": 136}
        yield cli, sorted(p for p in lib.rglob("*") if p.is_file())


def search(cli: Cli, *args: str) -> list[dict[str, Any]]:
    code, hits = cli.json("search", *args)
    assert code == 0
    return list(hits)


def test_has_star_returns_only_pictures_with_stars(demo):
    cli, files = demo
    stars = [f for f in files if facts(str(f))["shape"] == "star"]
    hits = search(cli, "a picture", "--has", "star", "-k", "500")
    got = [facts(h["path"])["shape"] for h in hits]
    assert got and all(s == "star" for s in got), got
    assert len(hits) >= 0.9 * len(stars), f"{len(hits)} of {len(stars)} star pictures found"
    assert all(h["objects"].get("star", 0) >= 1 for h in hits)


def test_has_star_3_returns_only_pictures_with_three_stars(demo):
    cli, files = demo
    three = [f for f in files if facts(str(f)) == {"style": None, "count": 3, "shape": "star"}]
    hits = search(cli, "a picture", "--has", "star:3", "-k", "500")
    assert hits and all(facts(h["path"])["count"] == 3 for h in hits)
    assert all(facts(h["path"])["shape"] == "star" for h in hits)
    assert len(hits) >= 0.8 * len(three)


def test_a_text_query_with_an_object_filter_ranks_within_the_matching_pictures(demo):
    cli, _ = demo
    hits = search(cli, "yellow", "--has", "star", "-k", "3")
    assert len(hits) == 3 and all(facts(h["path"])["shape"] == "star" for h in hits)


def test_style_filter_returns_artworks_of_that_style_and_hardly_ever_plain_pictures(demo):
    """The artwork score gates --style: of 96 plain pictures, at most 5 % may pass it (the
    toy model finds a few flat shapes on white line-art-like)."""
    cli, files = demo
    right = total = 0
    plain: set[str] = set()
    for style in synthworld.STYLES:
        hits = search(cli, "an artwork", "--style", style, "-k", "8")
        styles = [facts(h["path"])["style"] for h in hits]
        plain |= {h["path"] for h in hits if facts(h["path"])["style"] is None}
        right, total = right + styles.count(style), total + len(styles)
    n_plain = sum(facts(str(f))["style"] is None for f in files)
    assert len(plain) <= 0.05 * n_plain, f"{len(plain)} of {n_plain} plain pictures passed"
    assert right >= 0.8 * total, f"{right} of {total} filtered results in the right style"
    assert total >= 0.75 * 40, f"only {total} of the 40 artworks pass their style filter"


def test_style_scores_name_each_artworks_own_style_first(demo):
    """The issue's bar: style accuracy >= 0.9 on held-out artworks (the library's are
    seeds training never used)."""
    cli, _ = demo
    hits = search(cli, "--path-glob", "*/artworks/*", "-k", "500")
    assert len(hits) == 40
    right = sum(
        cli.json("show", str(h["item_id"]))[1]["labels"]["style"][0]["label"]
        == facts(h["path"])["style"]
        for h in hits
    )
    assert right >= 0.9 * len(hits), f"{right} of {len(hits)}"


def test_plain_pictures_get_a_low_artwork_score_and_show_no_styles(demo):
    cli, files = demo
    plain = [f for f in files if facts(str(f))["style"] is None][:20]
    low = 0
    for f in plain:
        detail = cli.json("show", str(f))[1]
        low += detail["labels"]["artwork"][0]["score"] < 0.5
    assert low >= 0.9 * len(plain)
