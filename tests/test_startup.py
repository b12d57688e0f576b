"""What a command pays before it does anything: opening the catalog must not import or
run Alembic when the schema is already at its head."""

from __future__ import annotations

from pathlib import Path

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
