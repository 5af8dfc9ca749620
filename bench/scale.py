"""Worker scaling: jobs per minute with 1, 2 and 3 workers on this machine.

For each worker count: a fresh node (receiver + scheduler, fsync on) receives
the same N phantom studies; once N jobs are pending, that many
``msvlm-node worker`` processes start and drain the queue. Throughput is N over
the time from the first claim to the last finish (model loading excluded), so
the figures show where scaling stops — cores, database or disk.

    python bench/scale.py [--studies 12] [--workers 1 2 3] [--model DIR] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from sqlalchemy import create_engine, func, select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.phantom import PhantomSpec, generate_study, write_study  # noqa: E402
from node.modelinfo import BUNDLED_DEMO  # noqa: E402
from node.schema import Job  # noqa: E402
from tests.support import dcmtk  # noqa: E402
from tests.support.node import free_port, write_config  # noqa: E402


def run(
    workers: int, studies: list[list[Path]], model: Path, url: str | None, work: Path
) -> tuple[float, float]:
    work.mkdir(parents=True)
    port = free_port()
    db_url = url or f"sqlite:///{work / 'ledger.db'}"
    config = write_config(
        work / "node.toml",
        {
            "node": {"port": port, "roles": ["receiver", "scheduler"]},
            "storage": {"path": str(work / "storage"), "min_free_mb": 64},
            "database": {"url": db_url},
            "settle": {"after_release_seconds": 0.5, "interval_seconds": 0.3},
            "worker": {"poll_seconds": 0.2},
            "model": {"path": str(model), "cpu_threads": max(1, (os.cpu_count() or 1) // workers)},
            "logging": {"level": "WARNING"},
        },
        [{"ae_title": "STORESCU", "host": "127.0.0.1"}],
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "MSVLM_NODE_CONFIG": str(config)}
    node = subprocess.Popen(
        [sys.executable, "-m", "node", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    engine = create_engine(db_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        time.sleep(3)
        for files in studies:
            dcmtk.run(
                "storescu", "-aet", "STORESCU", "-aec", "MSVLM", "127.0.0.1", str(port), *map(str, files)
            ).check_returncode()
        _until(lambda: _count(engine, "pending") == len(studies), 300)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "node", "worker"],
                env={**env, "MSVLM_NODE_WORKER__NAME": f"w{i}"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        cpu_before = psutil.cpu_times()
        _until(lambda: _count(engine, "succeeded") + _count(engine, "failed") == len(studies), 3600)
        cpu_after = psutil.cpu_times()
        with engine.connect() as conn:
            first, last = conn.execute(select(func.min(Job.started_at), func.max(Job.finished_at))).one()
            failed = _count(engine, "failed")
        if failed:
            raise RuntimeError(f"{failed} jobs failed")
        busy = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        idle = cpu_after.idle - cpu_before.idle
        return len(studies) / _seconds(first, last) * 60, busy / max(busy + idle, 1e-9)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=120)
        node.terminate()
        node.wait(timeout=60)
        engine.dispose()


def _seconds(first, last) -> float:  # type: ignore[no-untyped-def]
    if isinstance(first, str):
        from datetime import datetime

        first, last = datetime.fromisoformat(first), datetime.fromisoformat(last)
    return float((last - first).total_seconds())


def _count(engine, state: str) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Job).where(Job.state == state)).scalar_one())


def _until(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--model", type=Path, default=BUNDLED_DEMO)
    parser.add_argument("--database-url", help="e.g. a PostgreSQL URL (default: SQLite per run)")
    parser.add_argument("--matrix", type=int, default=64)
    parser.add_argument("--slices", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="msvlm-scale-"))
    studies = []
    for i in range(args.studies):
        out = work / "studies" / f"{i:03d}"
        write_study(
            generate_study(
                PhantomSpec(
                    modality="CT",
                    planes=("axial", "coronal"),
                    phases=("non_contrast", "arterial"),
                    seed=500 + i,
                    matrix=args.matrix,
                    slices=args.slices,
                )
            ),
            out,
        )
        studies.append(sorted(out.rglob("*.dcm")))
    print(
        f"{args.studies} CT phantom studies (2 planes x 2 phases, "
        f"{args.matrix}x{args.matrix}x{args.slices}); "
        f"model {args.model}; {os.cpu_count()} cores; database {args.database_url or 'SQLite'}"
    )
    base = None
    for workers in args.workers:
        if args.database_url:
            raise SystemExit("use a fresh database per worker count: run once per count with --workers N")
        rate, busy = run(workers, studies, args.model, args.database_url, work / f"run-{workers}")
        base = base or rate
        print(
            f"  workers={workers}  {rate:6.1f} jobs/min  x{rate / base:4.2f}  CPU busy {busy:4.0%}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
