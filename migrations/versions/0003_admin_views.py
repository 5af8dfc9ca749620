"""admin views: v_job_summary, v_failures, v_turnaround, v_studies_waiting

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VIEWS = ("v_job_summary", "v_failures", "v_turnaround", "v_studies_waiting")


def _seconds(later: str, earlier: str, dialect: str) -> str:
    """Seconds between two timestamp expressions, in the dialect's SQL."""
    if dialect == "postgresql":
        return f"EXTRACT(EPOCH FROM ({later} - {earlier}))"
    return f"((julianday({later}) - julianday({earlier})) * 86400.0)"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    s = lambda later, earlier: _seconds(later, earlier, dialect)  # noqa: E731
    op.execute(f"""
        CREATE VIEW v_job_summary AS
        SELECT j.id AS job_id, j.state, j.study_instance_uid, st.accession_number, st.study_date,
               j.view_count, j.settle_signal, j.attempts, j.worker, j.created_at, j.started_at,
               j.finished_at, j.error, j.model_name, j.model_version,
               {s("j.finished_at", "j.last_instance_at")} AS turnaround_seconds,
               (SELECT COUNT(*) FROM deliveries d WHERE d.job_id = j.id AND d.state = 'succeeded')
                   AS deliveries_succeeded,
               (SELECT COUNT(*) FROM deliveries d WHERE d.job_id = j.id AND d.state = 'failed')
                   AS delivery_attempts_failed,
               r.sr_sop_instance_uid, r.superseded_by_job_id
        FROM jobs j
        JOIN studies st ON st.study_instance_uid = j.study_instance_uid
        LEFT JOIN results r ON r.job_id = j.id
    """)
    op.execute("""
        CREATE VIEW v_failures AS
        SELECT 'job' AS kind, j.id AS job_id, j.study_instance_uid, NULL AS destination,
               j.attempts AS attempt, j.finished_at AS failed_at, j.worker AS actor, j.error AS reason
        FROM jobs j WHERE j.state = 'failed'
        UNION ALL
        SELECT 'delivery' AS kind, d.job_id, j.study_instance_uid, d.destination, d.attempt,
               d.finished_at AS failed_at, d.worker AS actor,
               COALESCE(d.error, 'status ' || CAST(d.status_code AS VARCHAR(16))) AS reason
        FROM deliveries d JOIN jobs j ON j.id = d.job_id WHERE d.state = 'failed'
    """)
    op.execute(f"""
        CREATE VIEW v_turnaround AS
        SELECT j.id AS job_id, j.study_instance_uid, j.last_instance_at, j.created_at AS settled_at,
               j.started_at, j.finished_at,
               (SELECT MIN(d.finished_at) FROM deliveries d WHERE d.job_id = j.id AND d.state = 'succeeded')
                   AS first_delivered_at,
               {s("j.created_at", "j.last_instance_at")} AS settle_seconds,
               {s("j.started_at", "j.created_at")} AS queue_seconds,
               j.load_seconds, j.infer_seconds, j.report_seconds,
               {
        s(
            "(SELECT MIN(d.finished_at) FROM deliveries d WHERE d.job_id = j.id AND d.state = 'succeeded')",
            "j.last_instance_at",
        )
    } AS last_image_to_sr_seconds
        FROM jobs j WHERE j.state = 'succeeded'
    """)
    op.execute("""
        CREATE VIEW v_studies_waiting AS
        SELECT st.study_instance_uid, st.accession_number, MAX(i.received_at) AS last_received_at,
               COUNT(i.id) AS instances, st.settled_at,
               CASE WHEN st.settled_at IS NULL OR MAX(i.received_at) > st.settled_at
                    THEN 'arriving' ELSE 'queued' END AS waiting_for
        FROM studies st
        JOIN instances i ON i.study_instance_uid = st.study_instance_uid
        GROUP BY st.study_instance_uid, st.accession_number, st.settled_at
        HAVING st.settled_at IS NULL OR MAX(i.received_at) > st.settled_at
            OR EXISTS (SELECT 1 FROM jobs j WHERE j.study_instance_uid = st.study_instance_uid
                       AND j.state IN ('pending', 'running'))
    """)


def downgrade() -> None:
    for view in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {view}")
