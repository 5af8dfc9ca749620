"""Response models of the admin HTTP API.

They mirror what :mod:`node.admin` returns (the CLI's ``--json`` shows the same
facts), so the OpenAPI document describes every field a client can rely on and
FastAPI checks each response against it. The manifest is the real
:class:`~node.manifest.Manifest`: the API shows exactly what the worker ran.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from node.manifest import Manifest


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSummary(_Out):
    id: int
    state: str
    study_instance_uid: str
    views: int
    attempts: int
    signal: str
    created_at: str | None
    finished_at: str | None
    worker: str | None
    error: str | None


class ModelInfo(_Out):
    name: str
    version: str
    weights_sha256: str


class Timings(_Out):
    """Stage timestamps (ISO, UTC) and durations in seconds: last image -> settled -> started -> finished."""

    last_instance_at: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    settle_seconds: float | None
    queue_seconds: float | None
    load_seconds: float | None
    infer_seconds: float | None
    report_seconds: float | None


class Finding(_Out):
    """One coded finding as the SR carries it."""

    key: str
    display: str
    code: str
    present: bool
    probability: float


class ResultOut(_Out):
    report: str
    impression: str
    findings: list[Finding]
    sr_sop_instance_uid: str
    sr_path: str
    superseded_by_job_id: int | None


class JobDelivery(_Out):
    destination: str
    attempt: int
    state: str
    status: str | None
    error: str | None
    not_before: str | None
    finished_at: str | None


class JobEventOut(_Out):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    at: str | None
    from_: str | None = Field(default=None, alias="from")
    to: str
    actor: str
    detail: str | None


class JobDetail(_Out):
    id: int
    state: str
    study_instance_uid: str
    attempts: int
    max_attempts: int
    worker: str | None
    signal: str
    supersedes_job_id: int | None
    model: ModelInfo
    error: str | None
    timings: Timings
    manifest: Manifest
    result: ResultOut | None
    deliveries: list[JobDelivery]
    events: list[JobEventOut]


class JobAction(_Out):
    """What a retry or cancel did."""

    id: int
    state: str
    previous_state: str
    actor: str


class StudySummary(_Out):
    study_instance_uid: str
    accession_number: str | None
    study_date: str | None
    instances: int
    last_received_at: str | None
    latest_job: int | None
    job_state: str | None


class SeriesOut(_Out):
    series_instance_uid: str
    number: int | None
    modality: str | None
    description: str | None
    instances: int
    own_output: bool


class StudyDetail(_Out):
    study_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    first_received_at: str | None
    settled_at: str | None
    series: list[SeriesOut]
    jobs: list[JobSummary]


class DeliveryOut(_Out):
    id: int
    job_id: int
    study_instance_uid: str
    destination: str
    ae_title: str
    host: str
    port: int
    attempt: int
    state: str
    not_before: str | None
    started_at: str | None
    finished_at: str | None
    worker: str | None
    status: str | None
    error: str | None


class AssociationOut(_Out):
    id: int
    calling_ae: str
    called_ae: str
    peer_host: str
    peer_port: int
    tls: bool
    receiver: str
    started_at: str | None
    ended_at: str | None
    outcome: str
    rejection_code: str | None
    rejection_reason: str | None
    instances_received: int
    instances_failed: int
    bytes_received: int


class Health(_Out):
    status: str


class Check(_Out):
    name: str
    ok: bool
    detail: str


class Ready(_Out):
    """All checks; the endpoint answers 503 when any of them failed."""

    ready: bool
    checks: list[Check]


class ErrorOut(_Out):
    detail: str
