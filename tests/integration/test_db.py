"""Schema ownership: migrations match the models; old schemas are refused, not touched."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import text

from node.db import alembic_config, create_db_engine, current_revision, ensure_schema, head_revision, upgrade
from node.errors import DatabaseError

pytestmark = pytest.mark.integration


def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    engine = create_db_engine(database_url)
    upgrade(engine)
    command.check(alembic_config(engine))  # raises if autogenerate would emit anything
    engine.dispose()


def test_empty_database_is_created_and_old_schema_refused(database_url: str) -> None:
    engine = create_db_engine(database_url)
    ensure_schema(engine, create_if_empty=True)
    assert current_revision(engine) == head_revision(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ancient'"))
    with pytest.raises(DatabaseError, match="run `msvlm-node db upgrade`"):
        ensure_schema(engine, create_if_empty=True)
    engine.dispose()


def test_existing_non_empty_database_without_our_schema_is_not_touched(database_url: str) -> None:
    engine = create_db_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE somebody_elses (id INTEGER)"))
    with pytest.raises(DatabaseError, match="revision none"):
        ensure_schema(engine, create_if_empty=True)
    engine.dispose()
