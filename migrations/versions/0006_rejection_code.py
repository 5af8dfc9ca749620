"""associations.rejection_code: why an association was refused, as a fixed code

Rows written before this revision only have the free-text reason; they are given
the code their text shows (the receiver's sentences have not changed), and
"other" when none matches.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: the receiver's reason sentences (node.receive.check_caller) and the code each one means
_PATTERNS = (
    ("called AE title %", "called_ae"),
    ("%is not in the allow-list", "calling_ae"),
    ("%is not allowed from %", "calling_host"),
    ("%associations already active%", "busy"),
)


def upgrade() -> None:
    with op.batch_alter_table("associations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rejection_code", sa.String(length=16), nullable=True))
    associations = sa.table(
        "associations",
        sa.column("outcome", sa.String),
        sa.column("rejection_code", sa.String),
        sa.column("rejection_reason", sa.Text),
    )
    reason = associations.c.rejection_reason
    op.execute(
        associations.update()
        .where(associations.c.outcome == "rejected")
        .values(
            rejection_code=sa.case(
                *((reason.like(pattern), code) for pattern, code in _PATTERNS), else_="other"
            )
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("associations", schema=None) as batch_op:
        batch_op.drop_column("rejection_code")
