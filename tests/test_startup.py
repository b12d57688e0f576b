"""What a command pays before it does anything: opening the catalog must not import or
run Alembic when the schema is already at its head."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import python_alone


def test_the_head_read_from_the_version_files_is_alembics_own():
    from alembic.script import ScriptDirectory

    import migrations
    from catalog import make_engine

    engine = make_engine("sqlite://")
    script = ScriptDirectory.from_config(migrations.alembic_config(engine))
    assert migrations.head() == script.get_current_head()


def test_opening_a_catalog_at_its_head_never_imports_alembic(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    code = (
        "import sys, migrations\n"
        "from catalog import make_engine\n"
        f"e = make_engine({url!r})\n"
        "first = migrations.ensure_head(e)\n"
        "print(first, 'alembic' in sys.modules)\n"
    )
    made = python_alone(code, tmp_path)
    again = python_alone(code, tmp_path)
    assert made.returncode == 0 and again.returncode == 0, made.stderr + again.stderr
    assert made.stdout.split() == ["True", "True"]  # a new catalog: migrated by Alembic
    assert again.stdout.split() == ["False", "False"]  # at head: one SELECT, no Alembic


def test_a_catalog_behind_the_head_is_still_upgraded_on_open(tmp_path: Path):
    import migrations
    from catalog import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrations.upgrade(engine, "0002")
    assert migrations.stored_revision(engine) == "0002"
    assert migrations.ensure_head(engine) is True
    assert migrations.stored_revision(engine) == migrations.head()
    assert migrations.ensure_head(engine) is False


SCENARIOS = [
    ({}, ""),
    ({"EVERLOOK_HOME": "~/lib-home", "everlook_negative_weight": "0.8"},
     "EVERLOOK_ARTWORK_MIN_SCORE=0.3\nEVERLOOK_NEGATIVE_WEIGHT=1.5\n"),
    ({"XDG_DATA_HOME": "{tmp}/xdg", "EVERLOOK_SPACES": '["clip", "imagebind"]'}, ""),
    ({"EVERLOOK_DATABASE_URL": "sqlite:///{tmp}/elsewhere.db"},
     "# a comment\nEVERLOOK_HOME='{tmp}/quoted home'\nexport EVERLOOK_ARTWORK_MIN_SCORE=0.75\n"),
    ({"EVERLOOK_DATABASE_URL": "postgresql://u@h/db", "EVERLOOK_SPACES": '["clip"]'}, ""),
    ({"EVERLOOK_HOME": "", "EVERLOOK_MODEL_DIR": ""}, ""),  # set but empty: "here"
    ({"EVERLOOK_MODEL_DIR": "{tmp}/weights", "EVERLOOK_DEVICE": "cpu"},
     "EVERLOOK_MODEL_DIR={tmp}/other\nEVERLOOK_CLIP_BACKEND=onnx\n"),
    ({"EVERLOOK_MILVUS_URI": "http://127.0.0.1:19530"}, "EVERLOOK_VECTOR_BACKEND=milvus\n"),
]  # fmt: skip


@pytest.mark.parametrize(("env", "dotenv"), SCENARIOS)
def test_the_quick_settings_read_what_the_settings_class_reads(
    env: dict[str, str], dotenv: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import os

    from everlook.quick import QuickSettings
    from everlook.settings import Settings

    for key in list(os.environ):
        if key.upper().startswith("EVERLOOK_") or key == "XDG_DATA_HOME":
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    (tmp_path / ".env").write_text(dotenv.format(tmp=tmp_path))
    monkeypatch.chdir(tmp_path)
    full = Settings()
    quick = QuickSettings.read()
    assert quick is not None
    assert quick.home == full.home
    url = full.catalog_url
    assert quick.sqlite_file == (Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///")
                                 else None)  # fmt: skip
    assert quick.negative_weight == full.negative_weight
    assert quick.artwork_min_score == full.artwork_min_score
    assert quick.spaces == tuple(full.spaces)
    assert quick.clip_backend == getattr(full, "clip_backend", "auto")
    assert quick.models_cache == full.models_cache and quick.index_dir == full.index_dir
    assert quick.model_dir == full.model_dir and quick.device == full.device
    assert quick.vector_backend == full.vector_backend


def test_a_setting_the_quick_reader_cannot_read_leaves_the_query_to_the_full_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from everlook.quick import QuickSettings

    monkeypatch.chdir(tmp_path)
    for bad in ({"EVERLOOK_NEGATIVE_WEIGHT": "heavy"}, {"EVERLOOK_ARTWORK_MIN_SCORE": "3"},
                {"EVERLOOK_SPACES": "clip,"},
                {"EVERLOOK_SPACES": '["clip", "bogus"]'},
                {"EVERLOOK_VECTOR_BACKEND": "qdrant"}):  # fmt: skip
        assert QuickSettings.read(bad, tmp_path) is None


def test_the_cuda_device_faiss_may_use_follows_the_device_setting():
    from everlook.wiring import cuda_number

    assert [cuda_number(d) for d in ("cpu", "auto", "cuda", "cuda:1", "mps")] == [
        None, 0, 0, 1, None,
    ]  # fmt: skip
