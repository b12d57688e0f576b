"""`everlook spaces` (what each space holds, and switching to a newly configured model)
and `everlook db prune` (dropping vectors nothing uses any more)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from everlook.cli import (
    EXIT_USAGE,
    _fail_config,
    _parts,
    app,
    db_app,
    emit_json,
    err,
    hold_writer,
    out,
)  # fmt: skip

spaces_app = typer.Typer(
    invoke_without_command=True,
    help="Embedding spaces: their models, how far each has come, switching models.",
)
app.add_typer(spaces_app, name="spaces")


def describe_spaces(parts: Any) -> dict[str, Any]:
    """Per enabled space: active model and its coverage, the backfilling model if any;
    and the vectors of spaces no longer enabled (kept until `everlook db prune`)."""
    book = parts.catalog.spaces
    stored = book.models()
    enabled: dict[str, Any] = {}
    for name, sp in parts.spaces.items():
        kinds = sorted(sp.kinds | sp.target_kinds)
        have, total = book.coverage(name, sp.embedder.model_id, kinds)
        row: dict[str, Any] = {
            "active": {"model_id": sp.embedder.model_id, "vectors": have, "items": total},
            "kinds": kinds,
            "index": str(sp.index.path),
        }
        if sp.target is not None:
            t_have, t_total = book.coverage(name, sp.target.model_id, kinds)
            row["backfilling"] = {"model_id": sp.target.model_id, "vectors": t_have,
                                  "items": t_total}  # fmt: skip
        enabled[name] = row
    kept = [{"space": s, "model_id": m, "vectors": n} for s, m, n in stored
            if s not in enabled or m not in _models_in_use(parts, s)]  # fmt: skip
    return {"spaces": enabled, "unused": kept}


def _models_in_use(parts: Any, space: str) -> set[str]:
    sp = parts.spaces.get(space)
    if sp is None:
        return set()
    return {sp.embedder.model_id} | ({sp.target.model_id} if sp.target else set())


@spaces_app.callback()
def spaces(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List the enabled spaces: the model answering queries, a model backfilling beside
    it, and vectors kept from spaces or models no longer used."""
    if ctx.invoked_subcommand is not None:
        return
    data = describe_spaces(_parts())
    if as_json:
        emit_json(data)
        return
    for name, row in data["spaces"].items():
        a = row["active"]
        out.print(f"{name} ({', '.join(row['kinds'])}): {a['model_id']} answers queries, "
                  f"{a['vectors']}/{a['items']} items embedded", highlight=False)  # fmt: skip
        b = row.get("backfilling")
        if b:
            ready = (
                "ready: `everlook spaces switch " + name + "`"
                if b["vectors"] >= b["items"]
                else "run `everlook enrich` (or a watching serve) to finish"
            )
            out.print(f"  backfilling {b['model_id']}: {b['vectors']}/{b['items']} ({ready})",
                      highlight=False)  # fmt: skip
    for u in data["unused"]:
        out.print(f"unused: {u['space']} {u['model_id']}, {u['vectors']} vectors (kept until "
                  "`everlook db prune`)", highlight=False)  # fmt: skip


@spaces_app.command("switch")
def switch(
    ctx: typer.Context,
    space: Annotated[str, typer.Argument(help="clip or imagebind.")],
    force: Annotated[
        bool, typer.Option("--force", help="Switch before the new model covers every item.")
    ] = False,
) -> None:
    """Make the newly configured model of a space the one that answers queries (after it
    has backfilled), and build its index."""
    parts = _parts()
    hold_writer(ctx, parts, "spaces switch")
    sp = parts.spaces.get(space)
    if sp is None:
        raise _fail_config(ValueError(f"space {space!r} is not enabled (EVERLOOK_SPACES)"))
    if sp.target is None:
        out.print(f"{space}: {sp.embedder.model_id} is already the configured model")
        return
    kinds = sorted(sp.kinds | sp.target_kinds)
    have, total = parts.catalog.spaces.coverage(space, sp.target.model_id, kinds)
    # Items the new model gave up on (after stage_max_attempts) do not hold it back.
    given_up = parts.catalog.stages.progress(
        f"embed/{space}:next", sp.target.model_id, kinds, parts.settings.stage_max_attempts
    )["failed"]
    if have + given_up < total and not force:
        err.print(f"[red]error:[/red] {sp.target.model_id} has embedded {have} of {total} "
                  "items; run `everlook enrich` first, or --force to switch now (items it "
                  "has not embedded are not found until it does)")  # fmt: skip
        raise typer.Exit(EXIT_USAGE)
    args = parts.embedder_args(space)
    parts.catalog.spaces.set_active(space, sp.target.model_id, args)
    from everlook.wiring import Parts

    fresh = Parts(parts.settings)  # the new model is active: its index is rebuilt
    index = fresh.spaces[space].index
    report = index.open()
    out.print(f"{space}: {sp.target.model_id} now answers queries ({index.count()} "
              f"vectors{', index rebuilt' if report.rebuilt_because else ''}); the vectors of "
              f"{sp.embedder.model_id} are kept until `everlook db prune`. Restart a "
              "running `everlook serve` to use it.", highlight=False)  # fmt: skip


@db_app.command("prune")
def prune(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go.")] = False,
) -> None:
    """Delete the vectors of spaces no longer enabled and of models no space uses (neither
    answering queries nor backfilling), with their index files."""
    parts = _parts()
    hold_writer(ctx, parts, "db prune")
    unused = describe_spaces(parts)["unused"]
    keep = {name: _models_in_use(parts, name) for name in parts.spaces}
    for u in unused:
        out.print(f"{'would delete' if dry_run else 'deleting'} {u['vectors']} vectors of "
                  f"{u['space']} {u['model_id']}", highlight=False)  # fmt: skip
    if dry_run:
        return
    parts.catalog.spaces.prune(keep)
    for path in parts.settings.index_dir.glob("*.faiss"):
        if path.stem not in keep:  # an index of a space no longer enabled
            path.unlink(missing_ok=True)
            out.print(f"removed {path}", highlight=False)
    if not unused:
        out.print("nothing to prune")
