"""A real `everlook serve` in a subprocess, for tests that talk HTTP to it (API over the
wire, the CLI finding the server, the browser tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(settings: dict[str, str]) -> dict[str, str]:
    """Only what a process needs, plus the given EVERLOOK_* settings: nothing of the
    developer's own EVERLOOK_* environment leaks in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "YOLO_CONFIG_DIR", "YOLO_VERBOSE",
            "YOLO_AUTOINSTALL")  # fmt: skip
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(settings)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[str]
    log: Path
    token: str | None = None

    def client(self, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serving(
    settings: dict[str, str], *args: str, cwd: Path, ready_timeout: float = 120
) -> Iterator[Served]:
    """`everlook serve ARGS` on a free port of 127.0.0.1, ready (/api/ready 200) before
    the block runs; stopped (SIGTERM, then SIGKILL) after it."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    env = clean_env(settings)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "everlook", "serve", *args, "--port", str(port)],
            env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    token = settings.get("EVERLOOK_API_TOKEN")
    served = Served(f"http://127.0.0.1:{port}", proc, log, token)
    try:
        _wait_ready(served, ready_timeout)
        yield served
    finally:
        stop(served.proc)  # the one running now: a test may have restarted it


def _wait_ready(served: Served, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with served.client(timeout=5) as c:
        while time.monotonic() < deadline:
            if served.proc.poll() is not None:
                raise RuntimeError(f"everlook serve exited {served.proc.returncode}:\n"
                                   f"{served.output()}")  # fmt: skip
            try:
                if c.get("/api/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"everlook serve not ready after {timeout}s:\n{served.output()}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def run_cli(settings: dict[str, str], *args: str, cwd: Path,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "everlook", *args], env=clean_env(settings), cwd=cwd,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@dataclass
class DemoLibrary:
    settings: dict[str, str]
    library: Path
    base: Path


def demo_library(base: Path, per_pair: int = 2, per_style: int = 6) -> DemoLibrary:
    """The demo world's pictures (its own CLIP and YOLO), indexed and enriched, in base.
    Pictures only, in the clip space only: the tests of sound build their own libraries
    (tests/test_spaces.py, test_api_audio.py...), and these tests also cover a server
    without the imagebind space."""
    sys.path.insert(0, str(REPO))
    from tools import demo as demo_tool

    settings = {"EVERLOOK_HOME": str(base / "home"), "EVERLOOK_DEVICE": "cpu",
                **demo_tool.demo_settings(), "EVERLOOK_SPACES": '["clip"]',
                # Style jobs small enough for tests: seconds each on 2 cores.
                "EVERLOOK_STYLIZE_SIDE": "64", "EVERLOOK_STYLIZE_STEPS": "12",
                "EVERLOOK_STYLIZE_PREVIEW_EVERY": "3"}  # fmt: skip
    lib = base / "library"
    demo_tool.build_library(lib, per_pair=per_pair, per_style=per_style, per_sound=0)
    done = run_cli(settings, "index", str(lib), cwd=base)
    if done.returncode != 0:
        raise RuntimeError(f"indexing the demo library failed:\n{done.stdout}\n{done.stderr}")
    return DemoLibrary(settings, lib, base)
