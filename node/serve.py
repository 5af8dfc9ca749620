"""Run the node: receiver process(es) now; scheduler and worker join here later.

``receivers = 1`` serves in this process; more start that many receiver
processes sharing the port through SO_REUSEPORT, so ingest uses every core.
SIGTERM or SIGINT stops accepting, lets in-flight associations finish (up to
``node.drain_seconds``) and exits cleanly.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from pathlib import Path

import pydicom.config

from node.config import Settings
from node.db import create_db_engine, ensure_schema, session_factory
from node.index import Indexer
from node.logs import configure_logging
from node.receive import ReceiveContext, build_server, build_ssl_context, drain
from node.store import InstanceStore

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> InstanceStore:
    s = settings.storage
    return InstanceStore(
        Path(s.path), min_free_mb=s.min_free_mb, max_used_percent=s.max_used_percent, fsync=s.fsync
    )


def run_receiver(settings: Settings, stop: threading.Event, ready: threading.Event | None = None) -> None:
    """Serve C-ECHO/C-STORE until ``stop`` is set, then drain."""
    # we validate what we index ourselves (UIDs, pixel data); pydicom's own read
    # validation would only add a log line per odd value from a peer
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    engine = create_db_engine(settings.database.url, echo=settings.database.echo)
    store = open_store(settings)
    ssl_context = build_ssl_context(settings)
    ctx = ReceiveContext(
        settings=settings,
        store=store,
        indexer=Indexer(engine, session_factory(engine)),
        tls=ssl_context is not None,
    )
    server = build_server(settings, ctx, ssl_context)
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
    if ready is not None:
        ready.set()
    stop.wait()
    log.info("receive.draining", extra={"in_flight": len(server.active_associations)})
    aborted = drain(server, timeout=settings.node.drain_seconds)
    thread.join(timeout=5)
    engine.dispose()
    log.info("receive.stopped", extra={"aborted": aborted})


def _receiver_process(settings: Settings) -> None:
    configure_logging(settings.logging.level, settings.logging.format)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_receiver(settings, stop)


def serve(settings: Settings) -> int:
    """The ``serve`` command: check the schema, sweep leftovers, run until signalled."""
    engine = create_db_engine(settings.database.url)
    ensure_schema(engine, create_if_empty=True)
    engine.dispose()
    open_store(settings).sweep_temporary()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    count = settings.node.receivers or os.cpu_count() or 1
    if count == 1:
        run_receiver(settings, stop)
        return 0

    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_receiver_process, args=(settings,), name=f"receiver-{i}")
        for i in range(count)
    ]
    for child in children:
        child.start()
    log.info("serve.started", extra={"receivers": count})
    while not stop.wait(0.5):
        if any(not child.is_alive() for child in children):
            log.error("serve.receiver_died", extra={"exitcodes": [c.exitcode for c in children]})
            break
    for child in children:
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGTERM)
    for child in children:
        child.join(timeout=settings.node.drain_seconds + 10)
    return 0 if all(c.exitcode == 0 for c in children) else 1
