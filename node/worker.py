"""The inference worker: claim a job, run MS-VLM on its views, write the SR, record it.

The model is loaded once and stays resident between jobs (the design's warm
model). A heartbeat thread renews the job's lease; if the worker dies, the
lease expires and the reaper gives the job to another worker. The same thread
enforces ``worker.job_timeout_seconds``: past it the job is failed with a
time-limit error and whatever the model returns later is discarded.

Errors about the data (unloadable views, broken geometry, an SR that fails
validation) fail the job at once with their message — retrying would fail the
same way. Anything else (a bug, out of memory) is retried up to
``worker.max_attempts``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from node.config import Settings
from node.deliver import schedule_first_attempts
from node.errors import ConfigError, NodeError
from node.evidence import evidence_for, find_key_images, stored_instances
from node.findings import FindingCode, finding_codes
from node.jobs import JobState, StaleJobState, claim_next, renew_lease, transition
from node.manifest import Manifest
from node.modelinfo import ModelIdentity
from node.narrative import impression_from_findings, restate_measurements, split_report
from node.schema import Job, Result
from node.sop_classes import SR_DOCUMENT_SOP_CLASS
from node.store import TEMP_SUFFIX, InstanceStore
from node.volume import load_view

if TYPE_CHECKING:
    from models.msvlm.pipeline import ReportGenerator

log = logging.getLogger(__name__)


def worker_name(configured: str | None) -> str:
    return configured or f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class WorkerContext:
    settings: Settings
    factory: sessionmaker[Session]
    store: InstanceStore
    model: ModelIdentity
    name: str
    generator: ReportGenerator
    codes: dict[str, FindingCode]
    stop: threading.Event = field(default_factory=threading.Event)
    #: set by settle in the same process so a new job starts without waiting for the next poll
    wake: threading.Event = field(default_factory=threading.Event)
    #: called after a job succeeded (serve uses it to run the delivery timer at once)
    on_succeeded: Callable[[], None] | None = None


def load_generator(settings: Settings, model: ModelIdentity) -> ReportGenerator:
    """Load the model once; ``device = auto`` picks CUDA when there is one."""
    import torch

    from models.msvlm.pipeline import ReportGenerator

    device = settings.model.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and settings.model.cpu_threads:
        torch.set_num_threads(settings.model.cpu_threads)
    started = time.perf_counter()
    try:
        generator = ReportGenerator.from_pretrained(
            model.path, device=device, precision=settings.model.precision
        )
    except (ValueError, TypeError, OSError) as exc:
        # a folder that cannot give a working model (wrong model type, weights missing what its
        # config needs, unreadable files): say so as a configuration error, not a traceback
        raise ConfigError(f"model.path: {exc}") from exc
    loaded = time.perf_counter()
    # Compiled decoding (precision bfloat16 on a GPU) compiles here rather than in the first job.
    generator.warm_up(max_new_tokens=settings.model.max_new_tokens, num_beams=settings.model.num_beams)
    placement = generator.placement
    log.info(
        "worker.model_loaded",
        extra={
            "model": model.name,
            "version": model.version,
            "device": device,
            "weights": str(placement.weight_dtype).removeprefix("torch."),
            "static_cache": placement.static_cache,
            "seconds": round(loaded - started, 2),
            "warm_up_seconds": round(time.perf_counter() - loaded, 2),
        },
    )
    return generator


def build_context(
    settings: Settings, factory: sessionmaker[Session], store: InstanceStore, model: ModelIdentity
) -> WorkerContext:
    import node.sr  # noqa: F401  (highdicom's import takes a second: pay it at start, not in the first job)

    return WorkerContext(
        settings=settings,
        factory=factory,
        store=store,
        model=model,
        name=worker_name(settings.worker.name),
        generator=load_generator(settings, model),
        codes=finding_codes(model.path),
    )


def run_worker(ctx: WorkerContext) -> None:
    """Claim and run jobs until ``ctx.stop`` is set."""
    log.info("worker.started", extra={"worker": ctx.name})
    while not ctx.stop.is_set():
        if not run_one(ctx):
            ctx.wake.wait(ctx.settings.worker.poll_seconds)
            ctx.wake.clear()
    log.info("worker.stopped", extra={"worker": ctx.name})


def run_one(ctx: WorkerContext) -> bool:
    """Claim and run one job; ``False`` when none was pending."""
    with ctx.factory() as session, session.begin():
        job = claim_next(session, worker=ctx.name, lease_seconds=ctx.settings.worker.lease_seconds)
        if job is None:
            return False
        job_id, manifest_json, attempt = job.id, job.manifest, job.attempts
        supersedes = job.supersedes_job_id
    log.info("worker.claimed", extra={"job": job_id, "attempt": attempt, "worker": ctx.name})
    guard = _LeaseGuard(ctx, job_id)
    guard.start()
    try:
        outcome = _process(ctx, job_id, attempt, Manifest.from_json(manifest_json), supersedes)
        guard.finish()
        if guard.timed_out:
            return True
        with ctx.factory() as session, session.begin():
            session.add(outcome.result)
            transition(
                session,
                job_id,
                expected=[JobState.RUNNING],
                to=JobState.SUCCEEDED,
                actor=ctx.name,
                worker=ctx.name,
                values=outcome.timings,
            )
            schedule_first_attempts(session, job_id, ctx.settings.delivery.destinations)
        log.info("worker.succeeded", extra={"job": job_id, **outcome.timings})
        if ctx.on_succeeded is not None:
            ctx.on_succeeded()
    except StaleJobState as exc:
        log.warning("worker.lost_job", extra={"job": job_id, "error": str(exc)})
    except NodeError as exc:
        guard.finish()
        _fail(ctx, job_id, str(exc), retry=False)
    except Exception as exc:  # a bug or resource failure: worth another attempt
        guard.finish()
        log.exception("worker.crashed", extra={"job": job_id})
        _fail(ctx, job_id, f"{type(exc).__name__}: {exc}", retry=True)
    return True


def _fail(ctx: WorkerContext, job_id: int, error: str, *, retry: bool) -> None:
    with ctx.factory() as session, session.begin():
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.RUNNING.value or job.worker != ctx.name:
            return
        again = retry and job.attempts < job.max_attempts
        try:
            transition(
                session,
                job_id,
                expected=[JobState.RUNNING],
                to=JobState.PENDING if again else JobState.FAILED,
                actor=ctx.name,
                worker=ctx.name,
                detail=error[:500],
                values={"error": error, **({"worker": None} if again else {})},
            )
        except StaleJobState:
            return
    log.warning("worker.failed", extra={"job": job_id, "error": error, "will_retry": again})


@dataclass
class _Outcome:
    result: Result
    timings: dict[str, Any]


def _process(
    ctx: WorkerContext, job_id: int, attempt: int, manifest: Manifest, supersedes: int | None
) -> _Outcome:
    from models.msvlm.processing_msvlm import ViewInput
    from node.sr import AlgorithmInfo, CodedFinding, DeviceInfo, build_report_sr, sr_uids
    from node.srcheck import validate_sr

    started = time.perf_counter()
    views = []
    sources = []
    for view in manifest.views:
        volume = load_view(view, root=ctx.store.root, settings=ctx.settings.volume)
        views.append(ViewInput.from_volume(volume))
        sources.append(volume.sources)
    loaded = time.perf_counter()
    output = ctx.generator.generate_report(
        views, max_new_tokens=ctx.settings.model.max_new_tokens, num_beams=ctx.settings.model.num_beams
    )
    inferred = time.perf_counter()
    del views

    findings_text, impression_text = split_report(output.text)
    impression_text, restated = restate_measurements(findings_text, impression_text, output.findings)
    for change in restated:
        log.info(
            "worker.impression_restated",
            extra={
                "job": job_id,
                "finding": change.key,
                "findings_mm": change.findings_mm,
                "impression_mm": change.impression_mm,
            },
        )
    restated_by_key = {change.key: change for change in restated}
    stored = stored_instances(ctx.factory, manifest.study_instance_uid)
    key_images = find_key_images(manifest, sources, output.key_slices, stored, output.key_regions)
    coded = [
        CodedFinding(
            key=key,
            display=code.display,
            code_value=code.code_value,
            coding_scheme=code.coding_scheme,
            code_meaning=code.code_meaning,
            probability=float(probability),
            present=output.present[key],
            # the site the narrative was told; coded when the vocabulary codes that site
            site=code.sites.get(output.sites[key][0]) if key in output.sites else None,
            key_image=key_images[key].reference if key in key_images else None,
            key_region=key_images[key].region if key in key_images else None,
        )
        for key, probability in output.findings.items()
        if (code := ctx.codes.get(key)) is not None
    ]
    impression_text = impression_text or impression_from_findings(coded)
    evidence = evidence_for(ctx.store.root, manifest, stored)
    series_uid, sop_uid = sr_uids(ctx.settings.node.uid_prefix, job_id, attempt)
    replaces = _replaced_document(ctx, supersedes)
    dataset = build_report_sr(
        evidence=evidence,
        findings_text=findings_text,
        impression_text=impression_text,
        findings=coded,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        series_number=9901,
        instance_number=1,
        device=DeviceInfo(
            uid=device_uid(ctx.settings),
            name=ctx.settings.node.ae_title,
            manufacturer="msvlm-node",
            model_name=f"{ctx.model.name} {ctx.model.version}",
            software_version=_software_version(),
        ),
        algorithm=AlgorithmInfo(
            name=ctx.model.name, version=ctx.model.version, weights_sha256=ctx.model.weights_sha256
        ),
        document=ctx.settings.report.document,
        series_description=ctx.settings.report.series_description,
        institution_name=ctx.settings.report.institution_name,
        replaces=replaces,
    )
    relative = ctx.store.relative_path(manifest.study_instance_uid, series_uid, sop_uid)
    final = ctx.store.absolute(relative)
    # hidden and ending in TEMP_SUFFIX: a crash mid-validation leaves nothing the sweep misses
    temp = final.parent / f".{final.name}.check{TEMP_SUFFIX}"
    temp.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(temp, enforce_file_format=True)
    try:
        if ctx.settings.report.validate_with_dicom3tools:
            validate_sr(temp)
        ctx.store.write(relative, (temp.read_bytes(),))
    finally:
        temp.unlink(missing_ok=True)
    reported = time.perf_counter()
    findings_json = json.dumps(
        [
            {
                "key": f.key,
                "display": f.display,
                "code": f"{f.coding_scheme}:{f.code_value}",
                "present": f.present,
                "probability": round(f.probability, 4),
                **(
                    {"site": output.sites[f.key][0], "site_probability": round(output.sites[f.key][1], 4)}
                    if f.key in output.sites
                    else {}
                ),
                # the side the images show (the token that shows it), which the site lies on
                **({"side_from_images": output.image_sides[f.key]} if f.key in output.image_sides else {}),
                # the image that shows it best, which the SR points to ("Best illustration of finding")
                **({"key_image": key_images[f.key].as_json()} if f.key in key_images else {}),
                # the impression gave another size; it now gives the findings' (`restate_measurements`)
                **(
                    {"impression_restated_from_mm": restated_by_key[f.key].impression_mm}
                    if f.key in restated_by_key
                    else {}
                ),
            }
            for f in coded
        ]
    )
    result = Result(
        job_id=job_id,
        report_text=findings_text,
        impression_text=impression_text,
        findings=findings_json,
        sr_sop_instance_uid=sop_uid,
        sr_series_instance_uid=series_uid,
        sr_path=relative,
    )
    return _Outcome(
        result=result,
        timings={
            "load_seconds": round(loaded - started, 3),
            "infer_seconds": round(inferred - loaded, 3),
            "report_seconds": round(reported - inferred, 3),
        },
    )


def device_uid(settings: Settings) -> str:
    """A stable UID for this node as an SR observer device, derived from its AE title."""
    from pydicom.uid import generate_uid

    return generate_uid(prefix=settings.node.uid_prefix, entropy_srcs=["device", settings.node.ae_title])


def _software_version() -> str:
    from node import __version__

    return f"msvlm-node {__version__}"


def _replaced_document(ctx: WorkerContext, supersedes: int | None) -> Any:
    from node.sr import ReplacedDocument

    if supersedes is None:
        return None
    with ctx.factory() as session:
        row = session.execute(
            select(Result.sr_series_instance_uid, Result.sr_sop_instance_uid, Job.study_instance_uid)
            .join(Job, Job.id == Result.job_id)
            .where(Result.job_id == supersedes)
        ).first()
    if row is None:
        return None
    return ReplacedDocument(
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.sr_series_instance_uid,
        sop_class_uid=SR_DOCUMENT_SOP_CLASS[ctx.settings.report.document],
        sop_instance_uid=row.sr_sop_instance_uid,
    )


class _LeaseGuard(threading.Thread):
    """Renews the lease while the job runs; fails the job when it passes its time limit."""

    def __init__(self, ctx: WorkerContext, job_id: int) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.ctx, self.job_id = ctx, job_id
        self.done = threading.Event()
        self.timed_out = False
        self.deadline = time.monotonic() + ctx.settings.worker.job_timeout_seconds

    def finish(self) -> None:
        self.done.set()
        self.join(timeout=10)

    def run(self) -> None:
        settings = self.ctx.settings.worker
        while not self.done.wait(settings.lease_seconds / 3):
            if time.monotonic() > self.deadline:
                self.timed_out = True
                _fail(
                    self.ctx,
                    self.job_id,
                    f"time limit of {settings.job_timeout_seconds:.0f} s exceeded",
                    retry=False,
                )
                return
            with self.ctx.factory() as session, session.begin():
                if not renew_lease(
                    session, self.job_id, worker=self.ctx.name, lease_seconds=settings.lease_seconds
                ):
                    log.warning("worker.lease_lost", extra={"job": self.job_id})
                    return
