"""retention: purge marks on instances and results, retention events

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import node.schema  # noqa: F401  (custom column types)

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retention_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", node.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("files_removed", sa.Integer(), nullable=False),
        sa.Column("bytes_freed", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_events")),
    )
    with op.batch_alter_table("retention_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_retention_events_at"), ["at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_retention_events_study_instance_uid"), ["study_instance_uid"], unique=False
        )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", node.schema.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sr_purged_at", node.schema.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("sr_purged_at")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("purged_at")
    with op.batch_alter_table("retention_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retention_events_study_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_retention_events_at"))
    op.drop_table("retention_events")
