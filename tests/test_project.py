"""Project rules that keep the code and docs honest: layering, documented settings."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from everlook.settings import Settings

REPO = Path(__file__).resolve().parent.parent
OURS = {"everlook", "catalog", "indexer", "search", "enrich", "api", "migrations"}
# DESIGN.md: who may import whom. Arrows point one way.
ALLOWED = {
    "catalog": set(),
    "search": {"catalog"},
    "enrich": {"catalog", "search"},
    "indexer": {"catalog", "search", "enrich"},
    "api": {"catalog", "search", "enrich", "indexer"},  # media decoding, the watcher it runs
    "migrations": {"catalog"},
    "everlook": OURS,
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


def test_packages_import_only_what_the_design_allows():
    bad = []
    for pkg, allowed in ALLOWED.items():
        for path in (REPO / pkg).rglob("*.py"):
            for dep in imports_of(path) - allowed - {pkg}:
                bad.append(f"{path.relative_to(REPO)} imports {dep}")
    assert bad == []


def test_every_setting_is_in_the_readme_configuration_table():
    readme = (REPO / "README.md").read_text()
    rows = set(re.findall(r"^\| `(EVERLOOK_[A-Z0-9_]+)` \|", readme, flags=re.M))
    expected = {f"EVERLOOK_{name.upper()}" for name in Settings.model_fields}
    assert expected - rows == set(), "settings missing from the README table"
    assert rows - expected == set(), "README documents settings that do not exist"


def test_readme_opens_with_the_demo_and_test_commands():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", readme, flags=re.S)
    assert "make demo" in blocks[0] and "make test" in blocks[0]


def test_ci_runs_the_readme_test_command_and_nothing_else():
    lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [ln for ln in lines if ln and not ln.startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]


def test_opening_catalog_and_index_does_not_import_torch(tmp_path):
    """The watcher and `stats` must not pay torch's ~500 MB until a model is needed."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from everlook.settings import Settings\n"
        "from everlook.wiring import Parts\n"
        "p = Parts(Settings())\n"
        "assert p.embedder.dim == 512 and p.embedder.input_side == 224\n"
        "p.index.open()\n"
        "p.pipeline().run([sys.argv[1]])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'open_clip' not in sys.modules, 'open_clip was imported'\n"
    )
    # A clean environment and a folder without .env: nothing of the developer's leaks in.
    env = {
        "PATH": __import__("os").environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "EVERLOOK_HOME": str(tmp_path / "home"),
        "EVERLOOK_CLIP_MODEL": "ViT-B-32",
        "EVERLOOK_CLIP_PRETRAINED": "laion2b_s34b_b79k",
    }
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "placeholder.jpg").touch()  # fails before any decoding
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "lib")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
