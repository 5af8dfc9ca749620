"""Run the node: receiver, scheduler and worker, in one process or spread out.

``node.roles`` says what this process runs. On a laptop everything runs here
(``msvlm-node serve``); in production receivers, timers and GPU workers can be
separate processes on separate machines sharing PostgreSQL and the storage
path, because stages only hand over through the database. ``node.receivers > 1``
starts that many receiver processes serving one listening socket, each taking a
connection only while no other serves fewer associations (``node.balance``).
SIGTERM or SIGINT stops accepting, lets in-flight associations and the current
job finish (up to ``node.drain_seconds``) and exits cleanly.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pydicom.config
from apscheduler.schedulers.background import BackgroundScheduler

from node.balance import AcceptBalance, Counts, shared_counts
from node.config import Settings
from node.db import create_db_engine, ensure_schema, session_factory
from node.deliver import DeliveryContext
from node.index import Indexer, receiver_identity
from node.logs import configure_logging
from node.modelinfo import model_identity, model_path
from node.receive import ReceiveContext, build_server, build_ssl_context, drain, listen_socket
from node.retention import RetentionContext
from node.scheduler import build_scheduler
from node.settle import SettleContext
from node.store import InstanceStore

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> InstanceStore:
    s = settings.storage
    return InstanceStore(
        Path(s.path), min_free_mb=s.min_free_mb, max_used_percent=s.max_used_percent, fsync=s.fsync
    )


def run_receiver(
    settings: Settings,
    stop: threading.Event,
    *,
    listener: socket.socket | None = None,
    balance: AcceptBalance | None = None,
) -> None:
    """Serve C-ECHO/C-STORE until ``stop`` is set, then drain.

    ``listener`` and ``balance`` are given to each of several receiver processes: the
    socket ``serve`` bound for all of them and their shared association counts.
    """
    # we validate what we index ourselves (UIDs, pixel data); pydicom's own read
    # validation would only add a log line per odd value from a peer
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    engine = create_db_engine(settings.database.url, echo=settings.database.echo)
    store = open_store(settings)
    ssl_context = build_ssl_context(settings)
    indexer = Indexer(engine, session_factory(engine))
    ctx = ReceiveContext(settings=settings, store=store, indexer=indexer, tls=ssl_context is not None)
    server = build_server(settings, ctx, ssl_context, listener=listener, balance=balance)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="dicom-acceptor", daemon=True
    )
    thread.start()
    host, port = server.server_address[:2]
    log.info(
        "receive.listening",
        extra={
            "ae_title": settings.node.ae_title,
            "host": host,
            "port": port,
            "tls": ssl_context is not None,
            "pid": os.getpid(),
        },
    )
    stop.wait()
    log.info("receive.draining", extra={"in_flight": len(server.active_associations)})
    aborted = drain(server, timeout=settings.node.drain_seconds)
    thread.join(timeout=5)
    indexer.close()
    engine.dispose()
    log.info("receive.stopped", extra={"aborted": aborted})


def _receiver_process(settings: Settings, listener: socket.socket, counts: Counts, slot: int) -> None:
    configure_logging(settings.logging.level, settings.logging.format)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_receiver(settings, stop, listener=listener, balance=AcceptBalance(counts, slot))


def _poke(scheduler: BackgroundScheduler, job_id: str) -> Callable[[], None]:
    """Run one of the scheduler's interval jobs now instead of at its next tick."""

    def poke() -> None:
        job = scheduler.get_job(job_id)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    return poke


def serve(settings: Settings) -> int:
    """The ``serve`` command: check the schema, sweep leftovers, run the roles until signalled."""
    roles = set(settings.node.roles)
    engine = create_db_engine(settings.database.url, echo=settings.database.echo)
    ensure_schema(engine, create_if_empty=True)
    factory = session_factory(engine)
    store = open_store(settings)
    store.sweep_temporary()
    actor = receiver_identity()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    scheduler = None
    worker_thread = None
    worker_ctx = None
    model_load_seconds = 0.0
    wake_worker = threading.Event()
    if roles & {"scheduler", "worker"}:
        model = model_identity(model_path(settings.model.path))
        if "scheduler" in roles:
            settle = SettleContext(
                settings=settings,
                factory=factory,
                storage_root=store.root,
                model=model,
                actor=actor,
                on_job_created=wake_worker.set,
            )
            delivery = DeliveryContext(
                settings=settings, factory=factory, storage_root=store.root, actor=actor
            )
            retention = RetentionContext(settings=settings, factory=factory, store=store, actor=actor)
            scheduler = build_scheduler(
                settle=settle,
                delivery=delivery,
                retention=retention,
                factory=factory,
                actor=actor,
                reap_interval=max(1.0, settings.worker.lease_seconds / 4),
            )
            scheduler.start()
        if "worker" in roles:
            from node.worker import build_context, run_worker

            load_started = time.perf_counter()
            worker_ctx = build_context(settings, factory, store, model)
            model_load_seconds = time.perf_counter() - load_started
            worker_ctx.wake = wake_worker
            if scheduler is not None:
                worker_ctx.on_succeeded = _poke(scheduler, "deliver")
            worker_thread = threading.Thread(
                target=run_worker, args=(worker_ctx,), name="worker", daemon=True
            )
            worker_thread.start()

    api_thread = None
    if settings.api.enabled:
        from node.api import run_api
        from node.metrics import cuda_process_stats

        ready = worker_ctx is not None
        api_thread = threading.Thread(
            target=run_api,
            args=(settings, factory, stop),
            name="api",
            kwargs={
                "model_ready": (lambda: ready) if worker_ctx is not None else None,
                "process_stats": cuda_process_stats(model_load_seconds) if worker_ctx is not None else None,
            },
        )
        api_thread.start()

    children: list[multiprocessing.process.BaseProcess] = []
    receiver_thread = None
    if "receiver" in roles:
        count = settings.node.receivers or os.cpu_count() or 1
        if count == 1:
            receiver_thread = threading.Thread(target=run_receiver, args=(settings, stop), name="receiver")
            receiver_thread.start()
        else:
            # One socket for all: each process takes a connection only while no other
            # serves fewer associations (node.balance); the kernel alone does not spread them.
            context = multiprocessing.get_context("spawn")
            listener = listen_socket(settings.node.host, settings.node.port)
            counts = shared_counts(context, count)
            children = [
                context.Process(
                    target=_receiver_process, args=(settings, listener, counts, i), name=f"receiver-{i}"
                )
                for i in range(count)
            ]
            for child in children:
                child.start()
            listener.close()  # the children hold their own descriptors
    log.info("serve.started", extra={"roles": ",".join(sorted(roles)), "receivers": len(children) or 1})

    while not stop.wait(0.5):
        if any(not child.is_alive() for child in children):
            log.error("serve.receiver_died", extra={"exitcodes": [c.exitcode for c in children]})
            break
    for child in children:
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGTERM)
    if receiver_thread is not None:
        receiver_thread.join()
    if worker_ctx is not None and worker_thread is not None:
        worker_ctx.stop.set()
        worker_thread.join(timeout=settings.node.drain_seconds)
    if scheduler is not None:
        scheduler.shutdown(wait=True)
    if api_thread is not None:
        api_thread.join(timeout=10)
    for child in children:
        child.join(timeout=settings.node.drain_seconds + 10)
    engine.dispose()
    log.info("serve.stopped")
    return 0 if all(c.exitcode == 0 for c in children) else 1
