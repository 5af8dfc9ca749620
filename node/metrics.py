"""Prometheus metrics computed from the ledger at scrape time.

Receivers, timers and GPU workers may be many processes on many machines; the
only place that knows the whole truth is the database. So the ledger metrics are
not in-process counters but a custom :class:`LedgerCollector` that asks SQL on
every scrape: any node's ``/metrics`` shows the same (correct) numbers, and a
restart loses nothing. Latency histograms are built in SQL from the rows
(cumulative ``SUM(CASE WHEN x <= le ...)``), so a scrape moves a few numbers,
never the rows. Only what cannot be in the database — this process's model
load time and GPU memory — comes from an optional provider callable.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import ColumnElement, Float, case, cast, extract, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node.jobs import JobState
from node.schema import Association, Delivery, Instance, Job, Study, utcnow

log = logging.getLogger(__name__)

#: seconds; wide enough for a 50 ms delivery and an hour of settling
BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)


@dataclass(frozen=True)
class ProcessStats:
    """What only this process knows: its worker's model load time and GPU memory."""

    model_load_seconds: float | None = None
    gpu_memory_allocated_bytes: int | None = None
    gpu_max_memory_allocated_bytes: int | None = None


ProcessStatsProvider = Callable[[], ProcessStats]


def cuda_process_stats(
    model_load_seconds: float | None, device: int | str | None = None
) -> ProcessStatsProvider:
    """A provider for a process running a CUDA worker (reads torch only if the worker imported it)."""

    def provider() -> ProcessStats:
        torch: Any = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return ProcessStats(model_load_seconds=model_load_seconds)
        return ProcessStats(
            model_load_seconds=model_load_seconds,
            gpu_memory_allocated_bytes=int(torch.cuda.memory_allocated(device)),
            gpu_max_memory_allocated_bytes=int(torch.cuda.max_memory_allocated(device)),
        )

    return provider


def seconds_between(later: Any, earlier: Any, dialect: str) -> ColumnElement[float]:
    """``later - earlier`` in seconds, in the dialect's SQL (as migration 0003's views do)."""
    if dialect == "postgresql":
        return cast(extract("epoch", later - earlier), Float)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def rejection_label() -> ColumnElement[str]:
    """The association's rejection code; "" when it was not rejected, "other" for a code-less rejection."""
    return case(
        (Association.rejection_code.is_not(None), Association.rejection_code),
        (Association.outcome == "rejected", "other"),
        else_="",
    )


class LedgerCollector(Collector):
    """Every ledger metric, read from the database on each scrape."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand only: registering must not touch the database

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        up = GaugeMetricFamily("msvlm_ledger_up", "1 if the ledger answered this scrape's queries")
        try:
            with self.factory() as session:
                metrics = list(self._ledger(session))
        except SQLAlchemyError as exc:
            log.warning("metrics.ledger_unreachable", extra={"error": type(exc).__name__})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics
        took = GaugeMetricFamily("msvlm_metrics_query_seconds", "Time the ledger queries of this scrape took")
        took.add_metric([], time.perf_counter() - started)
        yield took

    def _ledger(self, session: Session) -> Iterator[Metric]:
        dialect = session.get_bind().dialect.name
        yield from self._receive(session)
        yield from self._jobs(session)
        yield from self._latency(session, dialect)
        yield from self._deliveries(session)

    def _receive(self, session: Session) -> Iterator[Metric]:
        on_disk = Instance.purged_at.is_(None)  # retention removes files but keeps the rows
        arrivals, stored, stored_bytes = session.execute(
            select(
                func.coalesce(func.sum(Instance.receive_count), 0),
                func.coalesce(func.sum(case((on_disk, 1), else_=0)), 0),
                func.coalesce(func.sum(case((on_disk, Instance.size_bytes), else_=0)), 0),
            )
        ).one()
        yield _counter(
            "msvlm_instances_received", "Instances received, every arrival including re-sends", arrivals
        )
        yield _gauge("msvlm_instances_stored", "Distinct instances whose file is in storage", stored)
        yield _gauge(
            "msvlm_stored_bytes", "Bytes of the instances in storage (latest copy of each)", stored_bytes
        )
        received_bytes = session.execute(
            select(func.coalesce(func.sum(Association.bytes_received), 0))
        ).scalar_one()
        yield _counter("msvlm_received_bytes", "Bytes received over finished associations", received_bytes)
        yield _counter(
            "msvlm_studies",
            "Studies received",
            session.execute(select(func.count()).select_from(Study)).scalar_one(),
        )
        kind = rejection_label()
        associations = CounterMetricFamily(
            "msvlm_associations",
            "DICOM associations by outcome (open, released, aborted, rejected) and "
            "rejection reason (called_ae, calling_ae, calling_host, busy, other)",
            labels=["outcome", "reason"],
        )
        for outcome, reason, count in session.execute(
            select(Association.outcome, kind, func.count()).group_by(Association.outcome, kind)
        ):
            associations.add_metric([outcome, reason], count)
        yield associations

    def _jobs(self, session: Session) -> Iterator[Metric]:
        counts = dict.fromkeys((s.value for s in JobState), 0)
        counts.update(
            {state: n for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state))}
        )
        jobs = GaugeMetricFamily("msvlm_jobs", "Jobs by state", labels=["state"])
        for state, count in sorted(counts.items()):
            jobs.add_metric([state], count)
        yield jobs
        depth, oldest = session.execute(
            select(func.count(), func.min(Job.created_at)).where(Job.state == JobState.PENDING.value)
        ).one()
        yield _gauge("msvlm_queue_depth", "Jobs waiting for a worker", depth)
        # MIN() keeps the column's type, so this is an aware datetime on both dialects
        age = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
        yield _gauge("msvlm_queue_oldest_pending_age_seconds", "Age of the oldest pending job (0: none)", age)

    def _latency(self, session: Session, dialect: str) -> Iterator[Metric]:
        stages = HistogramMetricFamily(
            "msvlm_stage_duration_seconds",
            "Per-stage latency from the ledger: settle (last image -> job), "
            "queue (job -> started), load, infer, report (SR), delivery (one successful C-STORE)",
            labels=["stage"],
        )
        succeeded = Job.state == JobState.SUCCEEDED.value
        for stage, value, where in (
            ("settle", seconds_between(Job.created_at, Job.last_instance_at, dialect), []),
            (
                "queue",
                seconds_between(Job.started_at, Job.created_at, dialect),
                [Job.started_at.is_not(None)],
            ),
            ("load", Job.load_seconds, [succeeded]),
            ("infer", Job.infer_seconds, [succeeded]),
            ("report", Job.report_seconds, [succeeded]),
        ):
            _add_histogram(stages, [stage], session, value, Job, where)
        _add_histogram(
            stages,
            ["delivery"],
            session,
            seconds_between(Delivery.finished_at, Delivery.started_at, dialect),
            Delivery,
            [Delivery.state == "succeeded", Delivery.started_at.is_not(None)],
        )
        yield stages
        turnaround = HistogramMetricFamily(
            "msvlm_turnaround_seconds", "Last image received -> report (SR) written, succeeded jobs"
        )
        _add_histogram(
            turnaround,
            [],
            session,
            seconds_between(Job.finished_at, Job.last_instance_at, dialect),
            Job,
            [succeeded],
        )
        yield turnaround

    def _deliveries(self, session: Session) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "msvlm_delivery_failures", "Failed delivery attempts by destination", labels=["destination"]
        )
        succeeded = CounterMetricFamily(
            "msvlm_deliveries_succeeded", "Successful deliveries by destination", labels=["destination"]
        )
        backlog = GaugeMetricFamily(
            "msvlm_delivery_backlog", "Delivery attempts scheduled or sending", labels=["destination"]
        )
        rows = session.execute(
            select(Delivery.destination, Delivery.state, func.count()).group_by(
                Delivery.destination, Delivery.state
            )
        )
        for destination, state, count in rows:
            if state == "failed":
                failures.add_metric([destination], count)
            elif state == "succeeded":
                succeeded.add_metric([destination], count)
            else:
                backlog.add_metric([destination], count)
        yield from (failures, succeeded, backlog)


class ProcessCollector(Collector):
    """Model load time and GPU memory of this process's worker, from the provider."""

    def __init__(self, provider: ProcessStatsProvider) -> None:
        self.provider = provider

    def collect(self) -> Iterator[Metric]:
        stats = self.provider()
        if stats.model_load_seconds is not None:
            yield _gauge(
                "msvlm_model_load_seconds",
                "How long this process took to load the model",
                stats.model_load_seconds,
            )
        if stats.gpu_memory_allocated_bytes is not None:
            yield _gauge(
                "msvlm_gpu_memory_allocated_bytes",
                "CUDA memory allocated by this process now",
                stats.gpu_memory_allocated_bytes,
            )
        if stats.gpu_max_memory_allocated_bytes is not None:
            yield _gauge(
                "msvlm_gpu_max_memory_allocated_bytes",
                "Peak CUDA memory allocated by this process",
                stats.gpu_max_memory_allocated_bytes,
            )


def build_registry(
    factory: sessionmaker[Session], process_stats: ProcessStatsProvider | None = None
) -> CollectorRegistry:
    """A registry of its own (never the global one), so several apps can live in one process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(factory))
    if process_stats is not None:
        registry.register(ProcessCollector(process_stats))
    return registry


def _add_histogram(
    family: HistogramMetricFamily,
    labels: list[str],
    session: Session,
    value: Any,
    table: Any,
    where: list[Any],
) -> None:
    columns = [func.count(), func.coalesce(func.sum(value), 0.0)]
    columns += [func.coalesce(func.sum(case((value <= bound, 1), else_=0)), 0) for bound in BUCKETS]
    row = session.execute(select(*columns).select_from(table).where(value.is_not(None), *where)).one()
    count, total, *cumulative = row
    buckets = [(floatToGoString(bound), int(n)) for bound, n in zip(BUCKETS, cumulative, strict=True)]
    buckets.append(("+Inf", int(count)))
    family.add_metric(labels, buckets, float(total))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=float(value))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))
