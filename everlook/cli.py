"""The ``everlook`` command. Exit codes: 0 ok, 1 some files failed, 2 usage/config error."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from everlook.settings import Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Semantic search for your images: index folders, then search them.",
)
db_app = typer.Typer(no_args_is_help=True, help="Catalog database maintenance.")
app.add_typer(db_app, name="db")
out = Console(soft_wrap=True)  # never break paths across lines
err = Console(stderr=True, soft_wrap=True)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def shown(path: str) -> str:
    """A path for a terminal: bytes that are not UTF-8 shown as \\xNN (like ``ls -b``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def emit_json(data: Any) -> None:
    """JSON on stdout. ASCII-only, so a name that is not UTF-8 travels as its PEP 383
    escape (``\\udce9``), which ``os.fsencode`` turns back into the exact bytes."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic ValidationError: bad EVERLOOK_* value
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(EXIT_USAGE) from exc


def _parts() -> Any:
    from everlook.wiring import Parts

    return Parts(_settings())


def _fail_config(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(EXIT_USAGE)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders or files to index.")],
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include", help="Glob of names to index (repeatable); default: image extensions."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Glob of names or paths to skip (repeatable)."),
    ] = None,
    hidden: Annotated[
        bool, typer.Option("--hidden", help="Also index hidden files and folders.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Index folders: new and changed files are embedded, moved files re-pointed,
    vanished files removed."""
    from indexer.scan import ScanRules
    from search.embedders import ModelUnavailable

    for p in paths:
        if not p.exists() and not p.is_symlink():
            err.print(f"[red]error:[/red] no such file or folder: {p}")
            raise typer.Exit(EXIT_USAGE)
    parts = _parts()
    s = parts.settings
    rules = ScanRules(
        include or s.include, [*s.exclude, *(exclude or [])], hidden or s.include_hidden
    )
    started = time.monotonic()
    try:
        pipeline = parts.pipeline(rules)
        report = _run_with_progress(pipeline, [str(p) for p in paths], quiet=as_json)
    except (ModelUnavailable, ValueError) as exc:
        raise _fail_config(exc) from exc
    elapsed = time.monotonic() - started
    if as_json:
        emit_json({**report.as_dict(), "seconds": round(elapsed, 3)})
    else:
        _print_summary(report, elapsed)
    raise typer.Exit(EXIT_FAILED if report.failed else EXIT_OK)


def _run_with_progress(pipeline: Any, roots: list[str], quiet: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )  # fmt: skip

    columns = (
        TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[rate]} files/s"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(
        *columns, console=err, disable=quiet or not err.is_terminal, transient=False
    ) as bar:
        task = bar.add_task("index", total=None, rate="-")
        t0 = time.monotonic()

        def on_progress(done: int, total: int) -> None:
            dt = time.monotonic() - t0
            bar.update(
                task, completed=done, total=total, rate=f"{done / dt:.1f}" if dt > 0 else "-"
            )

        return pipeline.run(roots, progress=on_progress)


def _print_summary(report: Any, elapsed: float) -> None:
    r = report
    out.print(
        f"indexed in {elapsed:.1f}s: [green]{r.new} new[/green], {r.changed} changed, "
        f"{r.moved} moved, {r.duplicates} duplicate paths, {r.removed} removed, "
        f"{r.unchanged} unchanged, "
        + (f"[red]{len(r.failed)} failed[/red]" if r.failed else "0 failed")
    )
    for path, reason in r.failed:
        out.print(f"  [red]failed[/red] {escape(shown(path))}: {escape(reason)}", highlight=False)


@app.command()
def watch(
    paths: Annotated[list[Path], typer.Argument(help="Folders to watch.")],
    poll: Annotated[
        bool | None,
        typer.Option("--poll/--no-poll", help="Poll instead of inotify (network drives)."),
    ] = None,
    poll_interval: Annotated[
        float | None, typer.Option("--poll-interval", min=0.05, help="Seconds between polls.")
    ] = None,
    quiet: Annotated[
        float | None, typer.Option("--quiet", min=0.0, help="Seconds a file must stay unchanged.")
    ] = None,
) -> None:
    """Index folders, then keep following them as files arrive, change, move and vanish."""
    import signal

    from indexer.scan import ScanRules
    from indexer.watch import Watcher, WatchOptions, summary
    from search.embedders import ModelUnavailable

    for p in paths:
        if not p.is_dir():
            err.print(f"[red]error:[/red] not a folder: {p}")
            raise typer.Exit(EXIT_USAGE)
    logging.getLogger("everlook").setLevel(logging.INFO)
    parts = _parts()
    s = parts.settings
    opts = WatchOptions(
        quiet_seconds=s.watch_quiet_seconds if quiet is None else quiet,
        poll=s.watch_poll if poll is None else poll,
        poll_interval=s.watch_poll_interval if poll_interval is None else poll_interval,
        batch_size=s.batch_size,
    )
    rules = ScanRules(s.include, s.exclude, s.include_hidden)
    watcher = Watcher(parts.pipeline(rules), parts.catalog, [str(p) for p in paths], rules, opts)

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger("everlook.watch").info(
            "%s: finishing the current batch, then stopping", signal.Signals(signum).name
        )
        watcher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        watcher.start()
    except (ModelUnavailable, ValueError) as exc:
        watcher.close()
        raise _fail_config(exc) from exc
    logging.getLogger("everlook.watch").info(
        "watching %s (%s); Ctrl-C to stop", ", ".join(map(str, paths)), watcher.mode
    )
    try:
        watcher.run_forever()
    except ModelUnavailable as exc:
        raise _fail_config(exc) from exc
    err.print(f"watch ended: {summary(watcher.totals)}")


@app.command()
def search(
    text: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Find images like this image file.")
    ] = None,
    like: Annotated[
        str | None, typer.Option("--like", help="Find images like this indexed path or item id.")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top", min=1, max=10000, help="How many results.")] = 10,
    min_score: Annotated[
        float | None,
        typer.Option("--min-score", help="Drop results scoring below this cosine similarity."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Search by text, by an image file (--image), or by an indexed item (--like)."""
    from indexer.media import MediaError, decode_image, read_file
    from search.embedders import ModelUnavailable

    given = [x is not None for x in (text, image, like)]
    if sum(given) != 1:
        err.print("[red]error:[/red] give exactly one of TEXT, --image FILE or --like PATH_OR_ID")
        raise typer.Exit(EXIT_USAGE)
    parts = _parts()
    engine = parts.engine()
    try:
        if text is not None:
            hits = engine.by_text(text, k, min_score)
        elif image is not None:
            try:
                raw = read_file(str(image), parts.limits())
                decoded = decode_image(raw.data, parts.limits())
            except MediaError as exc:
                err.print(f"[red]error:[/red] cannot use {image} as a query: {exc}")
                raise typer.Exit(EXIT_USAGE) from exc
            hits = engine.by_image(decoded.image, k, min_score)
        else:
            assert like is not None
            item_id = _resolve_item(parts, like)
            hits = engine.by_item(item_id, k, min_score)
    except (ModelUnavailable, LookupError) as exc:
        raise _fail_config(exc) from exc
    if as_json:
        rows = [
            {"rank": n, "item_id": h.item_id, "score": round(h.score, 6),
             "path": h.paths[0] if h.paths else None, "paths": h.paths}
            for n, h in enumerate(hits, 1)
        ]  # fmt: skip
        emit_json(rows)
        return
    if not hits:
        out.print("no results")
        return
    # Plain aligned lines rather than a rich table: paths are never cut or folded,
    # since users copy them into other commands and pipes.
    width = max(len(str(h.item_id)) for h in hits)
    print(f"{'#':>3}  {'score':>7}  {'id':>{width}}  path")
    for n, h in enumerate(hits, 1):
        extra = f"  (+{len(h.paths) - 1} more)" if len(h.paths) > 1 else ""
        path = shown(h.paths[0]) if h.paths else "?"
        print(f"{n:>3}  {h.score:>7.4f}  {h.item_id:>{width}}  {path}{extra}")


def _resolve_item(parts: Any, ref: str) -> int:
    if ref.isdigit() and not os.path.exists(ref):
        if parts.catalog.item_exists(int(ref)):
            return int(ref)
        raise LookupError(f"no item with id {ref}")
    item_id = parts.catalog.item_id_for_path(os.path.abspath(ref))
    if item_id is None:
        raise LookupError(f"{ref} is not in the catalog (index it first)")
    return int(item_id)


@app.command()
def stats(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Items by kind, stage status, failures with reasons, index size, models in use."""
    from search.vectors.faiss_store import read_header

    parts = _parts()
    data = parts.catalog.stats()
    index_path = parts.settings.index_dir / "clip.faiss"
    idx: dict[str, Any] = {"path": str(index_path), "exists": index_path.is_file()}
    if index_path.is_file():
        idx["bytes"] = index_path.stat().st_size
        try:
            header, _ = read_header(index_path)
            idx.update(
                vectors=header.get("count"), model_id=header.get("model_id"), dim=header.get("dim")
            )
        except Exception as exc:
            idx["problem"] = str(exc)
    data["index"] = idx
    data["settings"] = {
        "home": str(parts.settings.home),
        "clip_model": parts.settings.clip_model,
        "clip_pretrained": parts.settings.clip_pretrained,
    }
    if as_json:
        emit_json(data)
        return
    items = data["items"]
    kinds = ", ".join(f"{k} {v}" for k, v in items["by_kind"].items()) or "none"
    out.print(f"[bold]items[/bold] {items['total']} ({kinds}), paths {data['paths']}")
    for stage, counts in data["stages"].items():
        out.print(
            f"[bold]stage[/bold] {stage}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )
    for m in data["models"]:
        out.print(
            f"[bold]model[/bold] {m['space']}: {m['model_id']} "
            f"(dim {m['dim']}, {m['count']} vectors)"
        )
    if idx["exists"]:
        out.print(
            f"[bold]index[/bold] {idx['path']}: {idx.get('vectors')} vectors, {idx['bytes']} bytes"
        )
    else:
        out.print(f"[bold]index[/bold] {idx['path']}: not built yet")
    fails = data["failures"]
    out.print(f"[bold]failures[/bold] {len(fails)}")
    for f in fails:
        where = f.get("path") or f"item {f.get('item_id')} ({f.get('stage')})"
        why = f.get("reason") or f.get("error") or ""
        out.print(f"  {escape(shown(str(where)))}: {escape(why)}", highlight=False)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending catalog migrations (also done automatically on start)."""
    import migrations
    from catalog import make_engine

    engine = make_engine(_settings().catalog_url)
    migrations.upgrade(engine)
    out.print(f"catalog at revision {migrations.current(engine)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
