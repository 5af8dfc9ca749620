"""End-to-end benchmark: a 300-slice phantom study from settle to the SR acknowledged.

Starts the real node (receiver, scheduler, worker in one process, fsync on) with
a destination SCP in this process, sends a 300-slice 512x512 CT study with dcmtk
storescu, and reads the ledger: time from the study settling to the SR
acknowledged by the destination, split into queue / load / model / SR /
delivery. The target is everything but the model under 1 s.

    python bench/e2e.py [--slices 300] [--matrix 512] [--model DIR] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pynetdicom import AE, evt
from sqlalchemy import create_engine, select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.phantom import PhantomSpec, generate_study, write_study  # noqa: E402
from node.modelinfo import BUNDLED_DEMO  # noqa: E402
from node.schema import Delivery, Job  # noqa: E402
from tests.support import dcmtk  # noqa: E402
from tests.support.node import free_port, write_config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--model", type=Path, default=BUNDLED_DEMO)
    parser.add_argument("--runs", type=int, default=2, help="studies sent one after another")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="msvlm-e2e-"))
    acknowledged: dict[str, float] = {}
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        with lock:
            acknowledged[str(event.request.AffectedSOPInstanceUID)] = time.time()
        return 0

    destination = AE(ae_title="BENCHPACS")
    for uid in ("1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.33"):
        destination.add_supported_context(uid)
    dest_port = free_port()
    server = destination.start_server(
        ("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    port = free_port()
    db = work / "ledger.db"
    config = write_config(
        work / "node.toml",
        {
            "node": {"port": port},
            "storage": {"path": str(work / "storage"), "min_free_mb": 64},
            "database": {"url": f"sqlite:///{db}"},
            "settle": {"after_release_seconds": 0.5, "interval_seconds": 0.2},
            "worker": {"poll_seconds": 0.1},
            "delivery": {
                "interval_seconds": 0.1,
                "destinations": [
                    {"name": "bench", "ae_title": "BENCHPACS", "host": "127.0.0.1", "port": dest_port}
                ],
            },
            "model": {"path": str(args.model)},
            "logging": {"level": "WARNING"},
        },
        [{"ae_title": "STORESCU", "host": "127.0.0.1"}],
    )
    log = (work / "node.log").open("wb")
    node = subprocess.Popen(
        [sys.executable, "-m", "node", "--config", str(config), "serve"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    engine = create_engine(f"sqlite:///{db}")
    try:
        _wait_port(port, node)
        print(
            f"model {args.model}; {args.slices}-slice {args.matrix}x{args.matrix} CT studies; "
            f"{os.cpu_count()} cores, CPU"
        )
        print(
            f"{'run':>3} {'queue':>7} {'load':>7} {'model':>7} {'SR':>7} {'deliver':>8} {'total':>7} "
            f"{'non-model':>9}"
        )
        for run in range(args.runs):
            study = work / f"study{run}"
            write_study(
                generate_study(
                    PhantomSpec(
                        modality="CT",
                        planes=("axial",),
                        phases=("non_contrast",),
                        seed=100 + run,
                        matrix=args.matrix,
                        slices=args.slices,
                        include_localizer=False,
                        include_dose_report=False,
                        include_oblique=False,
                    )
                ),
                study,
            )
            files = sorted(study.rglob("*.dcm"))
            sent = dcmtk.run(
                "storescu", "-aet", "STORESCU", "-aec", "MSVLM", "127.0.0.1", str(port), *map(str, files)
            )
            if sent.returncode != 0:
                raise RuntimeError(sent.stderr)
            job = _wait_job(engine, run + 1, node)
            with engine.connect() as conn:
                delivered = conn.execute(
                    select(Delivery.finished_at).where(
                        Delivery.job_id == job.id, Delivery.state == "succeeded"
                    )
                ).scalar_one()
            queue = (job.started_at - job.created_at).total_seconds()
            deliver = (delivered - job.finished_at).total_seconds()
            total = (delivered - job.created_at).total_seconds()
            non_model = total - job.infer_seconds
            print(
                f"{run:>3} {queue:7.2f} {job.load_seconds:7.2f} {job.infer_seconds:7.2f} "
                f"{job.report_seconds:7.2f} {deliver:8.2f} {total:7.2f} {non_model:9.2f}",
                flush=True,
            )
        print("(seconds; total = settle -> SR acknowledged by the destination; non-model = total - model)")
    finally:
        node.terminate()
        node.wait(timeout=60)
        server.shutdown()
        engine.dispose()
    return 0


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("node exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError("node did not start")


def _wait_job(engine, count: int, proc: subprocess.Popen[bytes]):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            jobs = conn.execute(select(Job).order_by(Job.id)).all()
            if len(jobs) >= count and jobs[count - 1].state in ("succeeded", "failed"):
                job = jobs[count - 1]
                delivered = conn.execute(
                    select(Delivery.id).where(Delivery.job_id == job.id, Delivery.state == "succeeded")
                ).first()
                if job.state == "failed":
                    raise RuntimeError(f"job failed: {job.error}")
                if delivered:
                    return job
        if proc.poll() is not None:
            raise RuntimeError("node exited")
        time.sleep(0.2)
    raise RuntimeError("timed out")


if __name__ == "__main__":
    raise SystemExit(main())
