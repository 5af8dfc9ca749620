"""Completeness through the real receiver: dcmtk storescu sends phantom studies, settle decides.

The receiver runs as a subprocess (role ``receiver``); settle runs here against
the same database, with a fixed model identity (no weights needed to decide
completeness), so each signal can be timed precisely.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from sqlalchemy import select

from models.phantom import PhantomSpec, generate_study, write_study
from node.config import Settings
from node.db import create_db_engine, session_factory
from node.manifest import Manifest
from node.modelinfo import ModelIdentity
from node.schema import Job, JobEvent, Study
from node.settle import SettleContext, settle_once
from tests.support import dcmtk
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration

AFTER_RELEASE = 1.5
QUIET = 4.0


def _study(tmp_path: Path, *, phases: tuple[str, ...], seed: int = 5) -> dict[str, list[Path]]:
    spec = PhantomSpec(
        modality="CT",
        planes=("axial",),
        phases=phases,
        seed=seed,
        matrix=32,
        slices=12,
        include_localizer=True,
        include_dose_report=True,
        include_oblique=False,
    )
    out = tmp_path / f"study-{seed}"
    write_study(generate_study(spec), out)
    return {folder.name: sorted(folder.glob("*.dcm")) for folder in sorted(out.iterdir()) if folder.is_dir()}


def _send(node: NodeProcess, files: list[Path]) -> float:
    result = dcmtk.run(
        "storescu", "-aet", "STORESCU", "-aec", node.ae_title, "127.0.0.1", str(node.port), *map(str, files)
    )
    assert result.returncode == 0, result.stderr
    return time.monotonic()


@pytest.fixture
def settle_ctx(node: NodeProcess) -> Iterator[SettleContext]:
    settings = Settings.model_validate(
        {
            "settle": {"after_release_seconds": AFTER_RELEASE, "quiet_seconds": QUIET},
            "storage": {"path": str(node.storage)},
            "database": {"url": node.database_url},
        }
    )
    engine = create_db_engine(node.database_url)
    model = ModelIdentity(path=Path("."), name="test-model", version="1", weights_sha256="0" * 64)
    yield SettleContext(
        settings=settings,
        factory=session_factory(engine),
        storage_root=node.storage,
        model=model,
        actor="test",
    )
    engine.dispose()


def _jobs(ctx: SettleContext) -> list[Job]:
    with ctx.factory() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def _settle_until_job(ctx: SettleContext, count: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        settle_once(ctx)
        if len(_jobs(ctx)) >= count:
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"no job {count} within {timeout}s")


def test_one_association_settles_after_release_not_after_quiet_timeout(
    node: NodeProcess, settle_ctx: SettleContext, tmp_path: Path
) -> None:
    series = _study(tmp_path, phases=("non_contrast", "arterial"))
    released = _send(node, [f for files in series.values() for f in files])
    settle_once(settle_ctx)
    assert _jobs(settle_ctx) == [], "settled before after_release_seconds had passed"
    settled = _settle_until_job(settle_ctx, 1, timeout=QUIET)
    assert settled - released + 0.3 >= AFTER_RELEASE and settled - released < QUIET - 1

    [job] = _jobs(settle_ctx)
    assert job.state == "pending" and job.settle_signal == "after_release"
    manifest = Manifest.from_json(job.manifest)
    assert [v.key for v in manifest.views] == ["CT:axial:non_contrast", "CT:axial:arterial"]
    assert {e.reason_code for e in manifest.excluded} >= {"localizer", "screen_capture"} or {
        e.reason_code for e in manifest.excluded
    } >= {"localizer", "dose_report"}
    with settle_ctx.factory() as session:
        events = session.scalars(select(JobEvent.to_state).where(JobEvent.job_id == job.id)).all()
    assert events == ["pending"]

    # nothing new: settling again creates nothing; re-sending the same study creates nothing
    settle_once(settle_ctx)
    _send(node, [f for files in series.values() for f in files])
    time.sleep(AFTER_RELEASE + 0.5)
    settle_once(settle_ctx)
    assert len(_jobs(settle_ctx)) == 1


def test_study_split_over_two_associations_with_a_pause_yields_one_job(
    node: NodeProcess, settle_ctx: SettleContext, tmp_path: Path
) -> None:
    series = _study(tmp_path, phases=("non_contrast", "venous"), seed=6)
    names = sorted(series)
    half = len(names) // 2
    _send(node, [f for name in names[:half] for f in series[name]])
    time.sleep(AFTER_RELEASE / 3)
    settle_once(settle_ctx)
    _send(node, [f for name in names[half:] for f in series[name]])
    _settle_until_job(settle_ctx, 1, timeout=QUIET)
    time.sleep(AFTER_RELEASE)
    settle_once(settle_ctx)
    [job] = _jobs(settle_ctx)
    assert [v.key for v in Manifest.from_json(job.manifest).views] == [
        "CT:axial:non_contrast",
        "CT:axial:venous",
    ]


def test_late_series_yields_a_superseding_job(
    node: NodeProcess, settle_ctx: SettleContext, tmp_path: Path
) -> None:
    series = _study(tmp_path, phases=("non_contrast", "arterial"), seed=7)
    late = [name for name in series if "arterial" in name]
    _send(node, [f for name, files in series.items() if name not in late for f in files])
    _settle_until_job(settle_ctx, 1, timeout=QUIET)
    _send(node, [f for name in late for f in series[name]])
    _settle_until_job(settle_ctx, 2, timeout=QUIET)
    first, second = _jobs(settle_ctx)
    assert second.supersedes_job_id == first.id and second.settle_signal == "late_series"
    assert len(Manifest.from_json(second.manifest).views) == len(Manifest.from_json(first.manifest).views) + 1


def test_aborted_association_settles_on_the_quiet_timeout(
    node: NodeProcess, settle_ctx: SettleContext, tmp_path: Path
) -> None:
    from pydicom import dcmread

    series = _study(tmp_path, phases=("non_contrast",), seed=8)
    files = [f for name, fs in series.items() if "non_contrast" in name for f in fs]
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    for path in files:
        assert assoc.send_c_store(dcmread(path)).Status == 0
    assoc.abort()
    aborted = time.monotonic()
    time.sleep(AFTER_RELEASE + 0.5)
    settle_once(settle_ctx)
    assert _jobs(settle_ctx) == [], "an aborted association must wait for the quiet timeout"
    settled = _settle_until_job(settle_ctx, 1, timeout=QUIET + 5)
    assert settled - aborted >= QUIET - 0.5
    [job] = _jobs(settle_ctx)
    assert job.settle_signal == "quiet"
    with settle_ctx.factory() as session:
        assert session.get(Study, job.study_instance_uid).settled_at is not None  # type: ignore[union-attr]


def test_two_settlers_at_once_create_one_job(
    node: NodeProcess, settle_ctx: SettleContext, tmp_path: Path
) -> None:
    import threading

    series = _study(tmp_path, phases=("non_contrast",), seed=9)
    _send(node, [f for files in series.values() for f in files])
    time.sleep(AFTER_RELEASE + 0.3)
    threads = [threading.Thread(target=settle_once, args=(settle_ctx,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_jobs(settle_ctx)) == 1
