"""`everlook watch` and `everlook serve`: the long-running commands."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from everlook.cli import EXIT_USAGE, _fail_config, _parts, app, err, hold_writer


@app.command()
def watch(
    ctx: typer.Context,
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
    enqueue_only: Annotated[
        bool,
        typer.Option("--enqueue-only", help="Only queue what changes, for `everlook worker` "
                     "processes (here or on other machines) to index and enrich."),
    ] = False,
) -> None:  # fmt: skip
    """Index folders, then keep following them as files arrive, change, move and vanish."""
    import signal

    from indexer.watch import summary
    from search.embedders import ModelUnavailable

    for p in paths:
        if not p.is_dir():
            err.print(f"[red]error:[/red] not a folder: {p}")
            raise typer.Exit(EXIT_USAGE)
    logging.getLogger("everlook").setLevel(logging.INFO)
    parts = _parts()
    s = parts.settings
    if not enqueue_only:  # a leader that only queues writes no index: workers do
        hold_writer(ctx, parts, "watch", [str(p) for p in paths])
    opts = watch_options(s, quiet, poll, poll_interval)
    rules = parts.scan_rules()
    try:
        watcher = parts.watcher([str(p) for p in paths], rules, opts)
    except (ValueError, ImportError) as exc:  # a bad stage setting, said plainly
        raise _fail_config(exc) from exc

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger("everlook.watch").info(
            "%s: finishing the current batch, then stopping", signal.Signals(signum).name
        )
        watcher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        watcher.start(enqueue_only=enqueue_only)
    except (ModelUnavailable, ValueError) as exc:
        watcher.close()
        raise _fail_config(exc) from exc
    logging.getLogger("everlook.watch").info(
        "watching %s (%s)%s; Ctrl-C to stop", ", ".join(map(str, paths)), watcher.mode,
        ", queueing for workers" if enqueue_only else "",
    )  # fmt: skip
    try:
        watcher.run_forever(work=not enqueue_only)
    except ModelUnavailable as exc:
        raise _fail_config(exc) from exc
    err.print(f"watch ended: {summary(watcher.totals)}")


def watch_options(
    s: Any, quiet: float | None = None, poll: bool | None = None,
    poll_interval: float | None = None,
) -> Any:  # fmt: skip
    """The watcher's options from settings, with what a command line overrode."""
    from indexer.watch import WatchOptions

    return WatchOptions(
        quiet_seconds=s.watch_quiet_seconds if quiet is None else quiet,
        poll=s.watch_poll if poll is None else poll,
        poll_interval=s.watch_poll_interval if poll_interval is None else poll_interval,
        batch_size=s.batch_size,
    )


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: may resolve to anything


@app.command()
def serve(
    ctx: typer.Context,
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Library folders to watch and serve.")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option("--port", min=0, max=65535)] = None,
    poll: Annotated[
        bool | None, typer.Option("--poll/--no-poll", help="Poll instead of inotify.")
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch/--no-watch",
            help="Watch and index the folders (the "
            "default), or only serve their files beside another writer.",
        ),
    ] = True,
) -> None:
    """The search API and web page, and (for library folders) the watcher and the
    enrichment stages, in one process. Without folders, or with --no-watch, it only
    reads, picking up what other processes add to the catalog."""
    import socket

    import uvicorn

    from everlook.lock import advertise, withdraw

    parts = _parts()
    s = parts.settings
    host = host or s.host
    port = s.port if port is None else port
    if s.api_token is None and not is_loopback(host):
        err.print(
            f"[red]error:[/red] refusing to serve on {host} without a token: anyone who can "
            "reach it could read your library. Set EVERLOOK_API_TOKEN (a long random "
            "string), or bind to 127.0.0.1."
        )
        raise typer.Exit(EXIT_USAGE)
    folders = [*s.library, *(str(p) for p in paths or [])]
    for f in folders:
        if not os.path.isdir(f):
            err.print(f"[red]error:[/red] not a folder: {f}")
            raise typer.Exit(EXIT_USAGE)
    roots = sorted({os.path.realpath(f) for f in folders})
    writes = bool(roots) and watch
    if writes:
        hold_writer(ctx, parts, "serve", roots)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("everlook").setLevel(logging.INFO)
    try:
        watcher = None
        if writes:
            opts = watch_options(s, poll=poll)
            watcher = parts.watcher(roots, parts.scan_rules(), opts)
        svc = parts.api_services(roots, watcher)
    except (ValueError, ImportError) as exc:
        raise _fail_config(exc) from exc
    from api import create_app

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot listen on {host}:{port}: {exc.strerror or exc}")
        raise typer.Exit(EXIT_USAGE) from None
    bound = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{bound}"
    server = uvicorn.Server(uvicorn.Config(
        create_app(svc), log_level="warning", timeout_graceful_shutdown=5, access_log=False,
    ))  # fmt: skip
    advertised = advertise(s.home, url)
    what = "read-only, no file serving"
    if roots:
        what = f"{'watching' if writes else 'serving read-only'} {', '.join(roots)}"
    err.print(f"Everlook at {url}/ — {what}; Ctrl-C to stop", highlight=False)
    try:
        server.run(sockets=[sock])
    finally:
        withdraw(advertised)
