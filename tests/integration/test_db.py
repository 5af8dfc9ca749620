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


def test_rejection_codes_are_given_to_rejections_recorded_before_the_column(database_url: str) -> None:
    """0006 reads the code out of the receiver's sentence for rows that only have the sentence."""
    engine = create_db_engine(database_url)
    command.upgrade(alembic_config(engine), "0005")
    reasons = {
        "called AE title 'PACS' is not ours ('MSVLM')": "called_ae",
        "calling AE title 'INTRUDER' is not in the allow-list": "calling_ae",
        "calling AE title 'CT1' is not allowed from 10.0.0.9": "calling_host",
        "4 associations already active (limit 4)": "busy",
        "refused by an operator's hand-written note": "other",
    }
    rows = [(f"r{i}", "rejected", reason) for i, reason in enumerate(reasons)] + [("ok", "released", None)]
    with engine.begin() as conn:
        for calling, outcome, reason in rows:
            conn.execute(
                text(
                    "INSERT INTO associations (calling_ae, called_ae, peer_host, peer_port, tls, receiver,"
                    " started_at, outcome, rejection_reason, instances_received, instances_failed,"
                    " bytes_received) VALUES (:calling, 'MSVLM', '127.0.0.1', 4000, false, 'test',"
                    " CURRENT_TIMESTAMP, :outcome, :reason, 0, 0, 0)"
                ),
                {"calling": calling, "outcome": outcome, "reason": reason},
            )
    upgrade(engine)
    with engine.connect() as conn:
        found = dict(conn.execute(text("SELECT rejection_reason, rejection_code FROM associations")).all())
    assert found == {**reasons, None: None}
    engine.dispose()
