"""Prometheus metrics computed from the ledger at scrape time (SQLite and PostgreSQL).

The flow test sends real phantom studies through the real receiver and settle,
scrapes, sends more, and scrapes again: the counters must move. The histogram
test checks exact cumulative buckets against rows with known durations.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from node.config import Settings
from node.db import create_db_engine, session_factory, upgrade
from node.jobs import JobState, claim_next, transition
from node.metrics import BUCKETS, ProcessStats, cuda_process_stats
from node.schema import Delivery, Job, Result, utcnow
from tests.integration.test_api import Ledger, make_settings, seed_job, seed_study

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(ledger: Ledger, app: object = None) -> Samples:
    response = ledger.local(app).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def ledger(database_url: str, tmp_path: Path) -> Iterator[Ledger]:
    engine = create_db_engine(database_url)
    upgrade(engine)
    storage = tmp_path / "storage"
    storage.mkdir()
    yield Ledger(make_settings(database_url, storage), session_factory(engine), storage)
    engine.dispose()


def test_histograms_and_gauges_are_built_from_the_rows(ledger: Ledger) -> None:
    manifest = seed_study(ledger.factory, "1.2.9.1")
    for version in ("1", "2", "3"):  # settle 6 s, queue 4 s, load 1.25, infer 6.5, report 0.4, delivery 0.3
        seed_job(
            ledger.factory,
            manifest,
            model_version=version,
            deliveries=(("pacs", "failed"), ("pacs", "succeeded")),
        )
    seed_job(ledger.factory, manifest, to=JobState.FAILED, model_version="4")
    pending = seed_job(ledger.factory, manifest, to=None, model_version="5")
    with ledger.factory() as session, session.begin():
        now = utcnow()
        session.execute(
            update(Job)
            .where(Job.id == pending)
            .values(created_at=now - timedelta(seconds=90), last_instance_at=now - timedelta(seconds=96))
        )

    s = scrape(ledger)
    assert value(s, "msvlm_ledger_up") == 1
    assert [value(s, "msvlm_jobs", state=st.value) for st in JobState] == [1, 0, 3, 1, 0]
    assert value(s, "msvlm_queue_depth") == 1
    assert 89 <= value(s, "msvlm_queue_oldest_pending_age_seconds") < 120

    def buckets(stage: str) -> dict[float, float]:
        return {
            bound: value(s, "msvlm_stage_duration_seconds_bucket", stage=stage, le=repr(bound))
            for bound in BUCKETS
        }

    assert buckets("settle")[5.0] == 0 and buckets("settle")[10.0] == 5  # every job, 6 s each
    assert value(s, "msvlm_stage_duration_seconds_count", stage="settle") == 5
    assert value(s, "msvlm_stage_duration_seconds_sum", stage="settle") == pytest.approx(30, abs=0.5)
    assert buckets("queue")[2.5] == 0 and buckets("queue")[5.0] == 4  # the four that started
    assert buckets("load")[1.0] == 0 and buckets("load")[2.5] == 3  # succeeded only
    assert value(s, "msvlm_stage_duration_seconds_sum", stage="load") == pytest.approx(3.75)
    assert buckets("infer")[5.0] == 0 and buckets("infer")[10.0] == 3
    assert buckets("report")[0.25] == 0 and buckets("report")[0.5] == 3
    assert buckets("delivery")[0.25] == 0 and buckets("delivery")[0.5] == 3  # the succeeded attempts
    assert value(s, "msvlm_stage_duration_seconds_bucket", stage="delivery", le="+Inf") == 3
    assert value(s, "msvlm_turnaround_seconds_count") == 3
    assert value(s, "msvlm_delivery_failures_total", destination="pacs") == 3
    assert value(s, "msvlm_deliveries_succeeded_total", destination="pacs") == 3
    assert value(s, "msvlm_instances_received_total") == 3 and value(s, "msvlm_stored_bytes") == 3000


def test_metrics_move_when_studies_flow(database_url: str, tmp_path: Path) -> None:
    """Real receiver (subprocess) + dcmtk + settle; then a worker's and a deliverer's rows."""
    from models.phantom import PhantomSpec, generate_study, write_study
    from node.modelinfo import ModelIdentity
    from node.settle import SettleContext, settle_once
    from tests.support import dcmtk
    from tests.support.node import NodeProcess

    workdir = tmp_path / "node"
    workdir.mkdir()
    node = NodeProcess(workdir, database_url).start()
    engine = create_db_engine(database_url)
    settings = make_settings(database_url, node.storage, settle={"after_release_seconds": 0.5})
    ledger = Ledger(settings, session_factory(engine), node.storage)
    ctx = SettleContext(
        settings=settings,
        factory=ledger.factory,
        storage_root=node.storage,
        actor="test",
        model=ModelIdentity(path=Path("."), name="m", version="1", weights_sha256="0" * 64),
    )
    app = ledger.app()

    def send_study(seed: int, calling_ae: str = "STORESCU") -> list[Path]:
        spec = PhantomSpec(
            modality="CT",
            planes=("axial",),
            phases=("non_contrast",),
            seed=seed,
            matrix=32,
            slices=10,
            include_localizer=False,
            include_dose_report=False,
            include_oblique=False,
        )
        write_study(generate_study(spec), tmp_path / f"s{seed}")
        files = sorted((tmp_path / f"s{seed}").rglob("*.dcm"))
        dcmtk.run(
            "storescu",
            "-aet",
            calling_ae,
            "-aec",
            node.ae_title,
            "127.0.0.1",
            str(node.port),
            *map(str, files),
        )
        return files

    def settle_until(count: int) -> None:
        deadline = time.monotonic() + 20
        while value(scrape(ledger, app), "msvlm_jobs", state="pending") < count:
            settle_once(ctx)
            assert time.monotonic() < deadline, "no job"
            time.sleep(0.2)

    try:
        empty = scrape(ledger, app)
        assert value(empty, "msvlm_instances_received_total") == 0
        first = send_study(21)
        settle_until(1)
        before = scrape(ledger, app)
        assert value(before, "msvlm_instances_received_total") == len(first)
        assert value(before, "msvlm_associations_total", outcome="released", reason="") == 1
        assert value(before, "msvlm_received_bytes_total") > 0
        assert value(before, "msvlm_queue_depth") == 1

        second = send_study(22)
        send_study(23, calling_ae="INTRUDER")  # refused by the allow-list
        send_study(21)  # the same study again: arrivals count, stored instances do not
        settle_until(2)
    finally:
        node.stop()

    after = scrape(ledger, app)
    assert value(after, "msvlm_instances_received_total") == 2 * len(first) + len(second)
    assert value(after, "msvlm_instances_stored") == len(first) + len(second)
    assert value(after, "msvlm_received_bytes_total") > value(before, "msvlm_received_bytes_total")
    assert value(after, "msvlm_associations_total", outcome="released", reason="") == 3
    assert value(after, "msvlm_associations_total", outcome="rejected", reason="calling_ae") == 1
    assert value(after, "msvlm_studies_total") == 2
    assert value(after, "msvlm_stage_duration_seconds_count", stage="settle") == 2
    assert value(after, "msvlm_stage_duration_seconds_count", stage="infer") == 0

    # a worker finishes one job and the deliverer fails once: the latency and failure series move
    with ledger.factory() as session, session.begin():
        job = claim_next(session, worker="gpu-1", lease_seconds=60)
        assert job is not None
        session.add(
            Result(
                job_id=job.id,
                report_text="r",
                impression_text="i",
                findings="[]",
                sr_sop_instance_uid="2.25.1",
                sr_series_instance_uid="2.25.2",
                sr_path="sr.dcm",
            )
        )
        transition(
            session,
            job.id,
            expected=[JobState.RUNNING],
            to=JobState.SUCCEEDED,
            actor="gpu-1",
            values={"load_seconds": 0.7, "infer_seconds": 3.0, "report_seconds": 0.2},
        )
        now = utcnow()
        session.add(
            Delivery(
                job_id=job.id,
                destination="pacs",
                ae_title="PACS",
                host="h",
                port=104,
                attempt=1,
                state="failed",
                started_at=now,
                finished_at=now,
                error="refused",
            )
        )
    done = scrape(ledger, app)
    assert value(done, "msvlm_stage_duration_seconds_count", stage="infer") == 1
    assert value(done, "msvlm_stage_duration_seconds_sum", stage="infer") == pytest.approx(3.0)
    assert value(done, "msvlm_jobs", state="succeeded") == 1 and value(done, "msvlm_queue_depth") == 1
    assert value(done, "msvlm_delivery_failures_total", destination="pacs") == 1
    engine.dispose()


def test_process_local_metrics_come_from_the_provider(ledger: Ledger) -> None:
    assert value(scrape(ledger), "msvlm_model_load_seconds") == 0
    stats = ProcessStats(
        model_load_seconds=4.5, gpu_memory_allocated_bytes=1 << 30, gpu_max_memory_allocated_bytes=3 << 30
    )
    s = scrape(ledger, ledger.app(process_stats=lambda: stats))
    assert value(s, "msvlm_model_load_seconds") == 4.5
    assert value(s, "msvlm_gpu_max_memory_allocated_bytes") == 3 << 30
    assert value(s, "msvlm_gpu_memory_allocated_bytes") == 1 << 30


def test_cuda_provider_reports_gpu_memory_only_once_cuda_is_in_use() -> None:
    provider = cuda_process_stats(2.0)
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        assert provider() == ProcessStats(model_load_seconds=2.0)
        return
    block = torch.empty(16 << 20, dtype=torch.uint8, device="cuda")
    stats = provider()
    assert (
        stats.gpu_max_memory_allocated_bytes is not None and stats.gpu_max_memory_allocated_bytes >= 16 << 20
    )
    del block


def test_an_unreachable_ledger_is_reported_not_raised(tmp_path: Path) -> None:
    broken = create_db_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no tables: every query fails
    ledger = Ledger(
        Settings.model_validate({"storage": {"path": str(tmp_path)}}), session_factory(broken), tmp_path
    )
    s = scrape(ledger)
    assert value(s, "msvlm_ledger_up") == 0 and not any(name == "msvlm_jobs" for name, _ in s)
    broken.dispose()
