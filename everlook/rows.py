"""Search results as the CLI prints them, from the cold path (everlook.quick) or the full
one (everlook.cli_search) alike; nothing heavy imported."""

from __future__ import annotations

import json
import sys
from typing import Any


def emit_json(data: Any) -> None:
    """JSON on stdout. ASCII-only, so a name that is not UTF-8 travels as its PEP 383
    escape (``\\udce9``), which ``os.fsencode`` turns back into the exact bytes."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        emit_json(rows)
        return
    if not rows:
        print("no results")
        return
    from indexer.media import printable  # names that are not UTF-8, shown as \\xNN

    # Plain aligned lines rather than a rich table: paths are never cut or folded,
    # since users copy them into other commands and pipes.
    width = max(len(str(r["item_id"])) for r in rows)
    print(f"{'#':>3}  {'score':>7}  {'id':>{width}}  path")
    for r in rows:
        extra = f"  (+{len(r['paths']) - 1} more)" if len(r["paths"]) > 1 else ""
        if r.get("kind") == "audio":
            dur = r.get("duration_s")
            extra = f"  [sound{f', {dur:.1f} s' if dur is not None else ''}]{extra}"
        path = printable(r["path"]) if r["path"] else "?"
        score = "      -" if r["score"] is None else f"{r['score']:>7.4f}"
        print(f"{r['rank']:>3}  {score}  {r['item_id']:>{width}}  {path}{extra}")
        line = about(r)
        if line:
            print(f"{'':>3}  {'':>7}  {'':>{width}}  {line}")


def about(r: dict[str, Any]) -> str:
    bits = []
    if r["objects"]:
        bits.append("objects: " + ", ".join(f"{k}×{v}" for k, v in r["objects"].items()))
    if r["tags"]:
        bits.append("tags: " + ", ".join(r["tags"][:8]))
    if r["styles"]:
        shown_styles = [x for x in r["styles"] if x["score"] >= 0.01] or r["styles"][:1]
        bits.append("style: " + ", ".join(f"{x['artist']} {x['score']:.0%}" for x in shown_styles))
    if r["labels"]:
        bits.append("labels: " + ", ".join(x["label"] for x in r["labels"][:3]))
    return " · ".join(bits)
