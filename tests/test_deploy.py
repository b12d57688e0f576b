"""The scale-out deployment files (deploy/, docs/scale-out.md) say only what exists:
every EVERLOOK_* setting they set is a real setting, every command and option they run
is a real one, the proxy sends requests to the port the API replicas listen on, and the
topology has what issue [9] asks for (PostgreSQL, Milvus standalone, one leader, N
workers, M API replicas behind a proxy)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())  # type: ignore[no-any-return]


def test_the_topology_has_every_part_and_everlook_services_share_one_image() -> None:
    services = compose()["services"]
    assert {"postgres", "milvus", "etcd", "minio", "leader", "worker", "api", "proxy"} <= set(
        services
    )
    assert services["leader"]["command"][:2] == ["watch", "--enqueue-only"]
    assert services["worker"]["command"] == ["worker"]
    assert services["api"]["command"][0] == "serve"
    for name in ("leader", "worker", "api"):
        env = services[name]["environment"]
        assert env["EVERLOOK_VECTOR_BACKEND"] == "milvus"
        assert env["EVERLOOK_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["EVERLOOK_MILVUS_URI"] == "http://milvus:19530"
        assert services[name]["image"] == "everlook:latest"


def test_every_setting_and_command_line_in_the_deployment_exists() -> None:
    from typer.main import get_command

    import everlook.cli_serve
    import everlook.cli_stylize  # noqa: F401  (registers worker)
    from everlook.cli import app
    from everlook.settings import Settings

    fields = {f"EVERLOOK_{n.upper()}" for n in Settings.model_fields}
    texts = [(REPO / "deploy" / "compose.yaml").read_text(),
             (REPO / "docs" / "scale-out.md").read_text()]  # fmt: skip
    used = {m for t in texts for m in re.findall(r"\bEVERLOOK_[A-Z0-9_]+", t)}
    assert used - fields == set(), "settings that do not exist"
    cli = get_command(app)
    for name in ("leader", "worker", "api"):
        words = compose()["services"][name]["command"]
        cmd = cli.commands[words[0]]  # type: ignore[attr-defined]
        options = {o for p in cmd.params for o in p.opts}
        for w in words[1:]:
            assert not w.startswith("--") or w in options, (name, w)
    assert "migrate-store" in cli.commands  # type: ignore[attr-defined]


def test_the_proxy_reaches_the_port_the_replicas_listen_on() -> None:
    api = compose()["services"]["api"]["command"]
    port = api[api.index("--port") + 1]
    nginx = (REPO / "deploy" / "nginx.conf").read_text()
    assert f"http://api:{port}" in nginx
