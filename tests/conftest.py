"""Fixtures: tiny open_clip and ImageBind models (seeded, random) loaded the way real
weights are."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED_MEDIA = REPO.parent / "shared" / "data" / "media"
TINY = "everlook-tiny"
TINY_TAG = "seed0"
TINY_IMAGEBIND = "everlook-tiny-imagebind"  # EVERLOOK_IMAGEBIND_MODEL selects it


@pytest.fixture(scope="session", autouse=True)
def ultralytics_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Ultralytics reads YOLO_CONFIG_DIR once per process, at import: point it at a
    temporary folder for the whole session, so no test writes to the real home."""
    folder = tmp_path_factory.mktemp("ultralytics")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_CONFIG_DIR", str(folder))
        mp.setenv("YOLO_VERBOSE", "false")
        mp.setenv("YOLO_AUTOINSTALL", "false")
        yield folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EVERLOOK_MODEL_DIR holding the tiny configs and their seeded random weights.

    The checkpoint goes where an offline user would put real weights, so tests exercise
    the same resolution and loading path (open_clip's add_model_config + pretrained file).
    """
    import open_clip
    import torch

    md = tmp_path_factory.mktemp("models")
    (md / "open_clip_configs").mkdir()
    shutil.copy(HERE / "data" / f"{TINY}.json", md / "open_clip_configs")
    open_clip.add_model_config(str(md / "open_clip_configs"))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    dest = md / "open_clip" / TINY / TINY_TAG
    dest.mkdir(parents=True)
    torch.save(model.state_dict(), dest / "open_clip_model.pt")
    save_tiny_imagebind(md / "imagebind")
    return md


def save_tiny_imagebind(folder: Path) -> None:
    """The tiny ImageBind config and seeded random weights, as `<name>.json` + `.pth`."""
    import json

    import torch

    from search.embedders.imagebind import upstream

    folder.mkdir(parents=True, exist_ok=True)
    config = HERE / "data" / f"{TINY_IMAGEBIND}.json"
    shutil.copy(config, folder)
    torch.manual_seed(0)
    net = upstream().models.ImageBindModel(**json.loads(config.read_text()))
    torch.save(net.state_dict(), folder / f"{TINY_IMAGEBIND}.pth")


def only_these_settings(mp: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    """Drop every EVERLOOK_* variable of the caller's environment, then set values."""
    for k in list(os.environ):
        if k.startswith("EVERLOOK_"):
            mp.delenv(k)
    for k, v in values.items():
        mp.setenv(k, v)


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of exported ONNX towers for the whole session: each test has a home of
    its own, and exporting the tiny model's towers again in each (5-15 s) would cost
    more than most tests. The cache is keyed by model id and weights, as a user's is."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture
def catalog_backend() -> str:
    """Where the test's catalog lives: "sqlite" (a file in its home), or "postgresql" (a
    database of its own on the session's server) where a test module asks for both
    with ``pytestmark = pytest.mark.both_catalogs``."""
    return "sqlite"


@pytest.fixture
def vector_backend() -> str:
    """Where the test's vectors live: "faiss" (index files in its home), or "milvus" (a
    collection of its own on the session's Milvus server) where a module asks for both
    with ``pytest.mark.both_vector_stores``."""
    return "faiss"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked both_catalogs (a module's pytestmark) run once per catalog backend,
    those that set up a catalog through the env fixture; sqlite_only ones stay on SQLite.
    Likewise both_vector_stores and faiss_only for the vector store."""
    node = metafunc.definition
    if (
        "catalog_backend" in metafunc.fixturenames
        and node.get_closest_marker("both_catalogs")
        and not node.get_closest_marker("sqlite_only")
    ):
        metafunc.parametrize("catalog_backend", ["sqlite", "postgresql"])
    if (
        "vector_backend" in metafunc.fixturenames
        and node.get_closest_marker("both_vector_stores")
        and not node.get_closest_marker("faiss_only")
    ):
        metafunc.parametrize("vector_backend", ["faiss", "milvus"])


@pytest.fixture
def env(
    model_dir: Path,
    onnx_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    catalog_backend: str,
    vector_backend: str,
    request: pytest.FixtureRequest,
) -> dict[str, str]:
    """Settings for one test: its own data dir, the tiny model (run as by default: ONNX
    Runtime on the CPU, from the session's shared export). Returns the env vars."""
    (tmp_path / "home" / "models").mkdir(parents=True)
    (tmp_path / "home" / "models" / "onnx").symlink_to(onnx_cache, target_is_directory=True)
    values = {
        "EVERLOOK_HOME": str(tmp_path / "home"),
        "EVERLOOK_MODEL_DIR": str(model_dir),
        "EVERLOOK_CLIP_MODEL": TINY,
        "EVERLOOK_CLIP_PRETRAINED": TINY_TAG,
        "EVERLOOK_DEVICE": "cpu",
        "EVERLOOK_BATCH_SIZE": "8",
        # The same code paths whether or not the CPU running the suite has AMX: bf16
        # pictures are tested on their own (tests/test_cpu_bf16.py).
        "EVERLOOK_CPU_BF16": "false",
        # Enrichment stages are opted into by the tests about them (tests/test_stages.py),
        # so the core tests measure the core.
        "EVERLOOK_STAGES": "[]",
    }
    if catalog_backend == "postgresql":
        values["EVERLOOK_DATABASE_URL"] = catalog_url(catalog_backend, Path(), request)
    if vector_backend == "milvus":
        import uuid

        values["EVERLOOK_VECTOR_BACKEND"] = "milvus"
        values["EVERLOOK_MILVUS_URI"] = request.getfixturevalue("milvus_uri")
        values["EVERLOOK_MILVUS_COLLECTION"] = f"t_{uuid.uuid4().hex[:10]}"  # its own
    only_these_settings(monkeypatch, values)
    monkeypatch.chdir(tmp_path)  # no stray .env from the repo
    return values


@pytest.fixture
def parts(env: dict[str, str]) -> Any:
    from everlook.settings import Settings
    from everlook.wiring import Parts

    return Parts(Settings())


class Cli:
    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Any:
        from everlook.cli import app

        return self.runner.invoke(app, list(args), catch_exceptions=False)

    def json(self, *args: str) -> Any:
        import json

        res = self(*args, "--json")
        return res.exit_code, json.loads(res.stdout)


@pytest.fixture
def cli(env: dict[str, str]) -> Cli:
    return Cli()


@pytest.fixture
def run_everlook(env: dict[str, str]) -> Iterator[Any]:
    """Run the real console entry point in a subprocess with the test's settings."""

    def run(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **env}
        return subprocess.run(
            [sys.executable, "-m", "everlook", *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )

    yield run


@pytest.fixture(scope="session")
def shared_images() -> Path:
    path = SHARED_MEDIA / "images"
    if not path.is_dir():
        pytest.skip(f"shared media not found at {path} (checkout without ../shared/data)")
    return path


@pytest.fixture(scope="session")
def demo_lib(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo library (synthetic pictures, the demo CLIP and YOLO), indexed once per
    test session; tests that change it make their own."""
    from tests.serving import demo_library

    return demo_library(tmp_path_factory.mktemp("demo-lib"))


def pg_copy(lib: Any, postgres: Any, base: Path) -> Any:
    """A demo library with its catalog on PostgreSQL: the SQLite catalog copied into a
    new database of the session's server by catalog.transfer (what `everlook
    migrate-store` does), ids and vectors kept; a home of its own under base with the
    same model caches and a copy of the index files (their catalog mark holds for the
    copy)."""
    import sqlite3

    import migrations
    from catalog import make_engine
    from catalog.transfer import copy_catalog
    from tests.serving import DemoLibrary

    url = new_pg_database(postgres)
    # From a snapshot (SQLite's online backup): a server over the library may be writing,
    # and a copy table by table could then name an item it did not copy.
    base.mkdir(parents=True, exist_ok=True)
    snapshot = base / "snapshot.db"
    live, copy = (
        sqlite3.connect(f"{lib.settings['EVERLOOK_HOME']}/catalog.db"),
        sqlite3.connect(snapshot),
    )
    try:
        live.backup(copy)
    finally:
        live.close()
        copy.close()
    src = make_engine(f"sqlite:///{snapshot}")
    dst = make_engine(url)
    migrations.ensure_head(dst)
    copy_catalog(src, dst)
    src.dispose()
    dst.dispose()
    old = Path(lib.settings["EVERLOOK_HOME"])
    home = base / "home"
    home.mkdir(parents=True)
    if (old / "models").exists():
        (home / "models").symlink_to(old / "models", target_is_directory=True)
    if (old / "index").exists():
        shutil.copytree(old / "index", home / "index")
    settings = {**lib.settings, "EVERLOOK_HOME": str(home), "EVERLOOK_DATABASE_URL": url}
    return DemoLibrary(settings, lib.library, base)


@pytest.fixture(scope="session")
def demo_lib_pg(demo_lib: Any, postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo library with its catalog on PostgreSQL (pg_copy), made once."""
    return pg_copy(demo_lib, postgres, tmp_path_factory.mktemp("demo-lib-pg"))


@pytest.fixture(scope="session")
def demo_server(demo_lib: Any) -> Iterator[Any]:
    """A real `everlook serve` (watcher included) over the demo library."""
    from tests.serving import serving

    with serving(demo_lib.settings, str(demo_lib.library), cwd=demo_lib.base) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium through Playwright, one per browser-test module (the
    modules skip themselves when chromium or playwright is missing; the sound tests
    launch theirs with a fake microphone)."""
    from tests.test_browser import CHROMIUM, sync_api

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real PostgreSQL server for the session (pgserver: PostgreSQL 16 with pgvector,
    on a Unix socket in a temporary folder), stopped and removed at the end."""
    import pgserver

    srv = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="delete")
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Milvus engine for the session: `milvus-lite server` on 127.0.0.1, which
    speaks the gRPC protocol of a Milvus standalone (clients connect as they would to
    one), stopped at the end. Skips with the reason when the milvus extra is missing."""
    import socket
    import time

    exe = shutil.which("milvus-lite") or str(Path(sys.executable).with_name("milvus-lite"))
    if not Path(exe).exists():
        pytest.skip("milvus-lite is not installed (pip install -e '.[milvus,test]')")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tmp_path_factory.mktemp("milvus")
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen(
        [exe, "server", "--data-dir", str(data / "db"), "--host", "127.0.0.1",
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("EVERLOOK_")},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"milvus-lite server did not start: {(data / 'server.log').read_text()}"
                    ) from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def new_pg_database(server: Any) -> str:
    """A new, empty database on the session's server, as a SQLAlchemy URL."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:12]}"
    server.psql(f"CREATE DATABASE {name};")
    return f"postgresql+psycopg://postgres@/{name}?host={server.pgdata}"


def catalog_setting(request: pytest.FixtureRequest) -> dict[str, str]:
    """For module fixtures parametrized by backend ("sqlite": the default file in the
    data dir; "postgresql": a new database of the session's server)."""
    if request.param == "postgresql":
        return {"EVERLOOK_DATABASE_URL": new_pg_database(request.getfixturevalue("postgres"))}
    return {}


@pytest.fixture
def pg_url(postgres: Any) -> str:
    """A new, empty database of that server for one test."""
    return new_pg_database(postgres)


def catalog_url(backend: str, sqlite_file: Path, request: pytest.FixtureRequest) -> str:
    """For fixtures that build their own catalog: a SQLite file, or a new PostgreSQL
    database of the session's server."""
    if backend == "postgresql":
        return new_pg_database(request.getfixturevalue("postgres"))
    return f"sqlite:///{sqlite_file}"
