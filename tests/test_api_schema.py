"""Schemathesis over the live OpenAPI schema of a real `everlook serve` with a token:
every operation, examples generated from the schema (valid and invalid), the stateful
phase following links between operations. A bounded run here; bench/api_fuzz.py runs
longer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.serving import serving

pytestmark = pytest.mark.slow
TOKEN = "schema-test-token"

# positive_data_acceptance is left out: it expects 2xx for every schema-valid request,
# and some answers depend on more than the schema can say (an opaque cursor from
# another query is 400, bytes that are not an image are 415, {} names no labels: 422).
# Server errors and every kind of schema violation are checked.
ARGS = ["--exclude-checks", "positive_data_acceptance", "-w", "1", "--seed", "1"]


def run_schemathesis(
    url: str, examples: int, timeout: float, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """The schemathesis CLI, run in cwd (it keeps a .schemathesis folder there)."""
    exe = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [str(exe), "run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}",
         "-n", str(examples), *ARGS],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_live_schema_holds_under_generated_requests(
    demo_lib: Any, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """On the demo library's SQLite catalog and on a PostgreSQL copy of it (PostgreSQL
    refuses what SQLite stores: a NUL in a text, an integer past 64 bits...)."""
    if backend == "postgresql":
        from tests.conftest import pg_copy

        demo_lib = pg_copy(demo_lib, request.getfixturevalue("postgres"), tmp_path / "pg")
    # Style jobs the generated requests queue are not run (they would only load the CPU).
    settings = {**demo_lib.settings, "EVERLOOK_API_TOKEN": TOKEN,
                "EVERLOOK_STYLIZE_CONCURRENCY": "0"}  # fmt: skip
    with serving(settings, str(demo_lib.library), "--no-watch", cwd=tmp_path) as served:
        done = run_schemathesis(served.url, examples=12, timeout=600, cwd=tmp_path)
        log = served.output()
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-6000:]
    assert "21 selected / 21 total" in report  # every operation, none filtered out
    assert "Traceback" not in report
    assert "internal error on" not in log, log[-4000:]  # the server logged no 500
