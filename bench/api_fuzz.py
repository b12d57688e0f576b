"""A long schemathesis run over the live OpenAPI schema of `everlook serve` (token on,
the demo library), beyond the bounded run inside `make test`.

    python bench/api_fuzz.py [--examples 200] [--seed N] [--keep DIR]

Prints schemathesis's report and the count of 500s the server logged. The bar: exit 0
(no server errors, no schema violations), no "internal error" in the server log.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.serving import demo_library, serving  # noqa: E402
from tests.test_api_schema import TOKEN, run_schemathesis  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200, help="examples per operation")
    ap.add_argument("--keep", type=Path, help="build the demo library here and keep it")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="everlook-fuzz-"))
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    demo = demo_library(base)
    print(f"demo library indexed in {time.monotonic() - t0:.0f} s", flush=True)
    settings = {**demo.settings, "EVERLOOK_API_TOKEN": TOKEN}
    with serving(settings, str(demo.library), "--no-watch", cwd=base) as served:
        t0 = time.monotonic()
        done = run_schemathesis(served.url, args.examples, timeout=6 * 3600, cwd=base)
        took = time.monotonic() - t0
        errors = served.output().count("internal error on")
    print(done.stdout[-20000:])
    print(done.stderr[-4000:])
    print(f"schemathesis: exit {done.returncode} in {took:.0f} s, {args.examples} examples per "
          f"operation; server-logged internal errors: {errors}")  # fmt: skip
    return 0 if done.returncode == 0 and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
