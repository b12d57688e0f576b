"""Many processes writing one catalog at once (issue [9] point 2): the same content,
paths, vectors and stage results stored by four processes started together make one
item per content, one row per path, one vector per (item, model) and one set of stage
results per item, with no process failing (INSERT ... ON CONFLICT, and stage results
written under the items' locked status rows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.both_catalogs, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]

WRITER = """
import json, sys, time
sys.path.insert(0, {repo!r})
import numpy as np
import migrations
from catalog import Catalog, make_engine
from catalog.queries import NewItem
from catalog.results import Detection, StageOutput
engine = make_engine({url!r})
migrations.ensure_head(engine)
cat = Catalog(engine)
n, me = {n}, {me}
vec = (np.ones(4, np.float32) / 2).tobytes()
items = [NewItem(sha256=f"{{i:064x}}", kind="image", size_bytes=10, path=f"/lib/{{i}}.jpg",
                 mtime_ns=1, model_id="m", vector=vec, dim=4, space="clip")
         for i in range(n)]
while time.time() < {start}:
    time.sleep(0.001)
ids = {{}}
for s in range(0, n, 5):  # small transactions, interleaving with the other processes'
    ids.update(cat.add_items(items[s:s + 5], "embed/clip"))
outs = {{i: StageOutput(detections=[Detection(label=f"w{{me}}", confidence=0.9,
                                             box=(0.1, 0.1, 0.5, 0.5))])
         for i in ids.values()}}
ordered = sorted(outs)
for s in range(0, len(ordered), 5):
    cat.stages.save("detect", "yolo-test", {{i: outs[i] for i in ordered[s:s + 5]}}, {{}})
print(json.dumps(sorted(ids.values())))
"""


def test_four_processes_storing_the_same_library_make_it_once(env: dict[str, str]) -> None:
    from sqlalchemy import func, select

    from catalog import Catalog, make_engine
    from catalog.models import DetectionRow, Embedding, FilePath, Item, StageState, StageStatus
    from everlook.settings import Settings

    url = Settings().catalog_url
    import migrations

    migrations.ensure_head(make_engine(url))
    n, start = 60, time.time() + 3
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVERLOOK_")}
    procs = []
    for me in range(4):
        code = WRITER.format(repo=str(REPO), url=url, n=n, me=me, start=start)
        procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=clean))  # fmt: skip
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for _, e in outs]
    seen = [json.loads(o) for o, _ in outs]
    assert all(s == seen[0] for s in seen) and len(seen[0]) == n  # the same ids for all
    cat = Catalog(make_engine(url))
    with cat.Session() as s:
        assert s.scalar(select(func.count()).select_from(Item)) == n
        assert s.scalar(select(func.count()).select_from(FilePath)) == n
        assert s.scalar(select(func.count()).select_from(Embedding)) == n
        per_item = dict(
            s.execute(select(DetectionRow.item_id, func.count()).group_by(DetectionRow.item_id))
            .all()
        )  # fmt: skip
        assert per_item == {i: 1 for i in seen[0]}  # one writer's results each, never two
        done = s.scalar(select(func.count()).select_from(StageStatus).where(
            StageStatus.stage == "detect", StageStatus.status == StageState.done,
            StageStatus.attempts == 1))  # fmt: skip
        assert done == n  # stored once: a later writer found it done and left it
