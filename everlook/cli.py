"""The ``everlook`` command. Exit codes: 0 ok, 1 some files failed, 2 usage/config error."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from everlook.rows import emit_json

if TYPE_CHECKING:  # pydantic-settings costs ~0.2 s: a cold query reads its few settings
    from everlook.settings import Settings  # itself (everlook.quick)

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
    """A path for a terminal (escaped where not UTF-8); see indexer.media.printable."""
    from indexer.media import printable

    return printable(path)


def _settings() -> Settings:
    from everlook.settings import Settings

    try:
        return Settings()
    except Exception as exc:  # pydantic ValidationError: bad EVERLOOK_* value
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(EXIT_USAGE) from exc


def _parts() -> Any:
    from everlook.wiring import Parts

    return Parts(_settings())


def hold_writer(
    ctx: typer.Context, parts: Any, command: str, paths: list[str] | None = None
) -> bool:
    """Take the data dir's writer lock for this process (released at exit). If a
    `serve` holds it and watches every path given, hand the paths to its queue instead
    and return True; otherwise, if held, say who holds it and exit 2."""
    from everlook.lock import Busy, WriterLock, describe

    lock = WriterLock(parts.settings.home)
    try:
        lock.acquire(command, paths)
    except Busy as busy:
        if paths and handed_to_server(parts, busy.holder, paths):
            return True
        err.print(
            f"[red]error:[/red] another Everlook process is writing to "
            f"{parts.settings.home}: {escape(describe(busy.holder))}. Wait for it or stop "
            "it; a running `everlook serve` indexes folders under its library itself."
        )
        raise typer.Exit(EXIT_USAGE) from None
    # Released when the command ends (its click context closes), so commands invoked
    # one after another in one process (tests, scripts) each take it afresh.
    ctx.call_on_close(lock.release)
    return False


def handed_to_server(parts: Any, holder: dict[str, Any], paths: list[str]) -> bool:
    """Queue paths for the server's watcher when they lie under the folders it watches."""
    import os

    from catalog.jobs import JobQueue
    from everlook.lock import describe

    roots = [os.path.realpath(r) for r in holder.get("roots") or []]
    real = [os.path.realpath(p) for p in paths]
    if holder.get("command") != "serve" or not roots:
        return False
    if not all(any(os.path.commonpath([p, r]) == r for r in roots) for p in real):
        return False
    queue = JobQueue(parts.catalog.engine)
    now = time.time()
    for p in real:
        queue.put(p, "scan" if os.path.isdir(p) else "index", now, closed=True)
    out.print(f"handed {len(real)} path(s) to the running server, {describe(holder)}; "
              "it indexes them now (see `everlook stats`)")  # fmt: skip
    return True


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
    ctx: typer.Context,
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
    vanished files removed; then enrichment stages catch up on the whole catalog."""
    from search.embedders import ModelUnavailable

    for p in paths:
        if not p.exists() and not p.is_symlink():
            err.print(f"[red]error:[/red] no such file or folder: {p}")
            raise typer.Exit(EXIT_USAGE)
    parts = _parts()
    if hold_writer(ctx, parts, "index", [str(p) for p in paths]):
        raise typer.Exit(EXIT_OK)  # handed to the running server
    rules = parts.scan_rules(include or (), exclude or (), hidden)
    started = time.monotonic()
    try:
        pipeline = parts.pipeline(rules)
        report = _run_with_progress(pipeline, [str(p) for p in paths], quiet=as_json)
    except (ModelUnavailable, ValueError, ImportError) as exc:
        raise _fail_config(exc) from exc
    runner = pipeline.stages
    if runner is not None:  # items this run did not enrich inline: older ones, retries
        _backfill_with_progress(runner, quiet=as_json)
        runner.save_indexes()  # the backfill may have added to a space's index
    for space in parts.spaces.values():
        # An index that grew past its size's kind rebuilds in the background: the
        # command waits for it, or a library grown only by `everlook index` runs would
        # never get its approximate index (the rebuild dying with the process each time).
        space.index.finish_rebuild()
    elapsed = time.monotonic() - started
    stages = (
        {"done": runner.stats.done, "failed": runner.stats.failed,
         "unavailable": runner.stats.unavailable} if runner is not None else {}
    )  # fmt: skip
    if as_json:
        emit_json({**report.as_dict(), "stages": stages, "seconds": round(elapsed, 3)})
    else:
        _print_summary(report, elapsed)
        for name, n in (stages.get("done") or {}).items():
            out.print(f"  stage {name}: {n} done, {stages['failed'].get(name, 0)} failed")
        for name, why in (stages.get("unavailable") or {}).items():
            err.print(f"[red]stage {name} unavailable:[/red] {escape(why)}")
    if stages.get("unavailable"):
        raise typer.Exit(EXIT_USAGE)  # the items are indexed; a stage's model is missing
    failed = report.failed or any((stages.get("failed") or {}).values())
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


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
def stats(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Items by kind, per-stage progress, failures with reasons, index size, models."""
    from catalog.jobs import JobQueue

    parts = _parts()
    data = parts.catalog.stats()
    data["queue"] = JobQueue(parts.catalog.engine).summary()
    data["index"] = parts.index.describe()
    data["progress"] = _stage_progress(parts)
    data["settings"] = {
        "home": str(parts.settings.home),
        "clip_model": parts.settings.clip_model,
        "clip_pretrained": parts.settings.clip_pretrained,
        "stages": parts.settings.stages,
    }
    if as_json:
        emit_json(data)
        return
    items = data["items"]
    kinds = ", ".join(f"{k} {v}" for k, v in items["by_kind"].items()) or "none"
    out.print(f"[bold]items[/bold] {items['total']} ({kinds}), paths {data['paths']}")
    q = data["queue"]
    if q["queued"] or q["held"] or q["lease_expired"]:
        out.print(f"[bold]queue[/bold] {q['queued']} waiting (oldest {q['oldest_wait_s']} s), "
                  f"{q['held']} being worked, {q['lease_expired']} past their lease")  # fmt: skip
    for stage, p in data["progress"].items():
        if "unavailable" in p:
            out.print(
                f"[bold]stage[/bold] {stage}: [red]unavailable[/red] ({escape(p['unavailable'])})"
            )
            continue
        out.print(
            f"[bold]stage[/bold] {stage}: {p['done']}/{p['total']} done, {p['pending']} pending, "
            f"{p['failed']} failed" + (f", {p['retrying']} to retry" if p["retrying"] else "")
            + f"  [dim]{escape(p['model_id'])}[/dim]"
        )  # fmt: skip
    for m in data["models"]:
        out.print(
            f"[bold]model[/bold] {m['space']}: {m['model_id']} "
            f"(dim {m['dim']}, {m['count']} vectors)"
        )
    idx = data["index"]
    if idx.get("exists"):
        out.print(
            f"[bold]index[/bold] {idx['path']}: {idx.get('vectors')} vectors, "
            f"{idx.get('bytes')} bytes"
        )
    else:
        out.print(f"[bold]index[/bold] {idx['path']}: not built yet")
    fails = data["failures"]
    out.print(f"[bold]failures[/bold] {len(fails)}")
    for f in fails:
        where = f.get("path") or f"item {f.get('item_id')} ({f.get('stage')})"
        why = f.get("reason") or f.get("error") or ""
        out.print(f"  {escape(shown(str(where)))}: {escape(why)}", highlight=False)


def _stage_progress(parts: Any) -> dict[str, Any]:
    """Per enabled stage: done/pending/failed for its current model (models not loaded)."""
    from search.embedders import ModelUnavailable

    s = parts.settings
    out: dict[str, Any] = {}
    emb = parts.embedder
    out["embed/clip"] = {
        "model_id": emb.model_id,
        **parts.catalog.stages.progress("embed/clip", emb.model_id, ["image"], 1),
    }
    for name in parts.stage_names():
        try:
            stage = parts.stage(name)
            out[name] = {
                "model_id": stage.model_id,
                **parts.catalog.stages.progress(
                    name, stage.model_id, stage.kinds, s.stage_max_attempts
                ),
            }
        except (ModelUnavailable, ValueError, ImportError) as exc:
            out[name] = {"unavailable": str(exc)}
    return out


@app.command()
def enrich(
    ctx: typer.Context,
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", help="Only this stage (repeatable); default: all enabled."),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option("--retry-failed", help="Also retry items that used up their attempts."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run the spaces' embedding stages (ImageBind, a model backfilling) and the enrichment
    stages on every item that still needs them (backfill)."""
    parts = _parts()
    hold_writer(ctx, parts, "enrich")
    try:
        names = stage or parts.stage_names()  # embed stages of the spaces, then enrichment
        runner = parts.stage_runner(names)
    except (ValueError, ImportError) as exc:
        raise _fail_config(exc) from exc
    if retry_failed:
        for name in names:
            parts.catalog.stages.retry_failed(name)
    started = time.monotonic()
    stats = _backfill_with_progress(runner, quiet=as_json)
    runner.save_indexes()
    summary = {
        "done": stats.done, "failed": stats.failed, "unavailable": stats.unavailable,
        "seconds": round(time.monotonic() - started, 3),
    }  # fmt: skip
    if as_json:
        emit_json(summary)
    else:
        for name in names:
            out.print(f"{name}: {stats.done.get(name, 0)} done, {stats.failed.get(name, 0)} failed")
        for name, why in stats.unavailable.items():
            err.print(f"[red]{name} unavailable:[/red] {escape(why)}")
    if stats.unavailable:
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(EXIT_FAILED if any(stats.failed.values()) else EXIT_OK)


def _backfill_with_progress(runner: Any, quiet: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        console=err, disable=quiet or not err.is_terminal,
    ) as bar:  # fmt: skip
        tasks: dict[str, Any] = {}
        for stage in runner.live():
            left = runner.pending(stage)["pending"]
            tasks[stage.name] = bar.add_task(stage.name, total=left)

        def on_progress(name: str, n: int) -> None:
            bar.advance(tasks[name], n)

        return runner.backfill(progress=on_progress)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending catalog migrations (also done automatically on start)."""
    import migrations
    from catalog import make_engine

    engine = make_engine(_settings().catalog_url)
    migrations.upgrade(engine)
    out.print(f"catalog at revision {migrations.current(engine)}")


@app.command("migrate-store")
def migrate_store(
    ctx: typer.Context,
    database_url: Annotated[str, typer.Option(
        "--database-url", help="The catalog to move to: postgresql+psycopg://user@host/db "
        "(an empty database).")],
    milvus_uri: Annotated[str | None, typer.Option(
        "--milvus-uri", help="Also move the vectors to this Milvus (http://host:19530).")] = None,
    milvus_collection: Annotated[str | None, typer.Option(
        "--milvus-collection", help="Alias prefix there (default EVERLOOK_MILVUS_COLLECTION).")
    ] = None,
) -> None:  # fmt: skip
    """Move this library onto servers many machines share: the catalog (every table, ids
    kept) into PostgreSQL and, with --milvus-uri, its vectors into Milvus. The library
    here is left as it was; afterwards, point EVERLOOK_DATABASE_URL (and
    EVERLOOK_VECTOR_BACKEND/EVERLOOK_MILVUS_URI) at the new ones."""
    from catalog import make_engine
    from catalog.transfer import TargetNotEmpty, copy_catalog
    from everlook.wiring import Parts

    parts = _parts()
    hold_writer(ctx, parts, "migrate-store")  # nothing changes the library meanwhile
    s = parts.settings
    if database_url == s.catalog_url:
        raise _fail_config(ValueError("--database-url is the catalog in use already"))
    import migrations

    target = make_engine(database_url)
    migrations.ensure_head(target)  # the source is, being open
    try:
        report = copy_catalog(parts.catalog.engine, target)
    except TargetNotEmpty as exc:
        raise _fail_config(exc) from exc
    rows = ", ".join(f"{n} {t}" for t, n in report.rows.items() if n)
    out.print(f"catalog copied to {escape(target.url.render_as_string())}: {rows}",
              highlight=False)  # fmt: skip
    update: dict[str, Any] = {"database_url": database_url}
    if milvus_uri:
        update.update(vector_backend="milvus", milvus_uri=milvus_uri)
        if milvus_collection:
            update["milvus_collection"] = milvus_collection
        moved = Parts(s.model_copy(update=update))
        for name, sp in moved.spaces.items():
            sp.index.open()  # built in Milvus from the copied catalog, which holds the vectors
            sp.index.save()
            out.print(f"{name}: {sp.index.count()} vectors in Milvus "
                      f"({getattr(sp.index.store, 'name', '?')})", highlight=False)  # fmt: skip
    shown_url = target.url.render_as_string(hide_password=True)  # never echo a password
    out.print("now set: " + " ".join(
        f"EVERLOOK_{k.upper()}={shown_url if k == 'database_url' else v}"
        for k, v in update.items()), highlight=False)  # fmt: skip


def main() -> None:
    app()


# Commands that live in their own modules register on `app` when imported.
from everlook import cli_search, cli_serve, cli_spaces, cli_stylize  # noqa: E402, F401

if __name__ == "__main__":
    main()
