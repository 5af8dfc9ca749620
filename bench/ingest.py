"""Ingest benchmark: our node against dcmtk storescp and Orthanc, same machine, same run.

Sends N 512x512 CT instances with dcmtk ``storescu`` over 1 and over K
associations (K sender processes with disjoint file sets) to each receiver,
verifies every instance arrived, and prints images/s, MB/s, the receiver's
CPU (all its processes, in core-seconds and as a share of the machine) and its
peak RSS, then our ratios. Every dcmtk peer runs with TCP_NODELAY=1 (dcmtk
3.6.7 leaves Nagle on otherwise, capping any receiver at ~22 images/s).

    python bench/ingest.py [--count 1000] [--associations 1 4] [--receivers 0] [--rounds 3]

Each receiver runs ``--rounds`` times per association count, in an order that
rotates every round (so no receiver always goes first on a cold machine), after
the source files were read once into the page cache; the median round is
reported with the spread, and the ratios are of medians. On a shared VM single
runs of the same receiver vary by a third.

Every round's received files stay on disk until the whole run ends. Removing
them between rounds made the next receiver slower: on ext4 a file created within
minutes of many deletions in its block group makes the kernel step over each
recently deleted inode (``find_inode_bit`` → ``recently_deleted``: 18% of our
receiver's CPU under ``perf``), a cost of the benchmark's own clean-up that a
receiver in service does not pay, and one that fell unevenly on receivers
writing one directory (ours, storescp) and hashed directories (Orthanc). Each run
ends with ``sync``, so the next does not pay for writing back its predecessor's
files (storescp does not fsync).

The node runs its receiver role alone by default, like the two references, which
only store: with every role a worker would be importing torch and loading the
model in the same process tree while the benchmark counts its CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.dicom import write_ct_series  # noqa: E402
from tests.support.node import free_port, write_config  # noqa: E402

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Result:
    receiver: str
    associations: int
    seconds: float
    images: int
    megabytes: float
    cpu_seconds: float
    peak_rss_mb: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    @property
    def cpu_share(self) -> float:
        return self.cpu_seconds / self.seconds / (os.cpu_count() or 1)


class Sampler(threading.Thread):
    """Samples a process tree: CPU time (incl. reaped children) and peak RSS."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.stop = threading.Event()
        self.peak_rss = 0
        self._cpu: dict[int, float] = {}

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
                self._cpu[proc.pid] = times.user + times.system
                if proc.pid == self.root.pid:  # children it already reaped (storescp --fork)
                    self._cpu[-1] = times.children_user + times.children_system
            except psutil.NoSuchProcess:
                pass
        total = sum(self._cpu.values())
        return total

    def run(self) -> None:
        while not self.stop.wait(0.05):
            rss = 0
            for proc in self._tree():
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss += proc.memory_info().rss
            self.peak_rss = max(self.peak_rss, rss)
            self.cpu_seconds()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


class Receiver:
    name = ""
    ae_title = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> None:
        cmd, env = self.command()
        log = (self.workdir / "receiver.log").open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_port(self.port, self.proc)
        time.sleep(0.5)

    def stored(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Node(Receiver):
    name = "msvlm-node"
    ae_title = "MSVLM"

    def __init__(self, workdir: Path, receivers: int, roles: tuple[str, ...]) -> None:
        super().__init__(workdir)
        self.receivers = receivers
        self.roles = roles
        self.db = workdir / "ledger.db"

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = write_config(
            self.workdir / "node.toml",
            {
                "node": {"port": self.port, "receivers": self.receivers, "roles": list(self.roles)},
                "storage": {"path": str(self.workdir / "storage"), "min_free_mb": 64, "fsync": True},
                "database": {"url": f"sqlite:///{self.db}"},
                "logging": {"level": "INFO"},
            },
            [{"ae_title": "STORESCU", "host": "127.0.0.1"}],
        )
        return [sys.executable, "-m", "node", "--config", str(config), "serve"], {
            **os.environ,
            "PYTHONPATH": str(REPO),
        }

    def start(self) -> None:
        """Start, then wait until every receiver process is listening, not just the first.

        Spawned receivers import the node while the first one already accepts; sending
        earlier would count their start-up as receive CPU and slow the first run.
        """
        super().start()
        log = self.workdir / "receiver.log"
        deadline = time.monotonic() + 60
        while log.read_text(errors="replace").count("receive.listening") < self.receivers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only some of {self.receivers} receiver processes started")
            time.sleep(0.1)

    def stored(self) -> int:
        import sqlite3

        with sqlite3.connect(self.db) as conn:
            return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])


class StoreScp(Receiver):
    name = "dcmtk storescp"
    ae_title = "STORESCP"

    def command(self) -> tuple[list[str], dict[str, str]]:
        out = self.workdir / "out"
        out.mkdir()
        # bit-preserving writes, one process per association: the tuned dcmtk set-up
        return [
            "/usr/bin/storescp",
            "--fork",
            "+B",
            "-aet",
            self.ae_title,
            "-od",
            str(out),
            str(self.port),
        ], DCMTK_ENV

    def stored(self) -> int:
        return sum(1 for _ in (self.workdir / "out").rglob("*") if _.is_file())


class Orthanc(Receiver):
    name = "Orthanc"
    ae_title = "ORTHANC"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.http = free_port()

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = {
            "Name": "bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "HttpPort": self.http,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "SyncStorageArea": True,
            "StorageCompression": False,
            "DicomThreadsCount": 4,
            "Plugins": [],
            "LogExportedResources": False,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        return ["/usr/sbin/Orthanc", str(path)], DCMTK_ENV

    def stored(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/statistics", timeout=30) as reply:
            return int(json.load(reply)["CountInstances"])


def send(receiver: Receiver, chunks: list[list[Path]]) -> float:
    start = time.perf_counter()
    senders = [
        subprocess.Popen(
            [
                "/usr/bin/storescu",
                "-aet",
                "STORESCU",
                "-aec",
                receiver.ae_title,
                "127.0.0.1",
                str(receiver.port),
                *map(str, chunk),
            ],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    for sender in senders:
        _, err = sender.communicate()
        if sender.returncode != 0:
            raise RuntimeError(f"storescu to {receiver.name} failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


def run_one(
    kind: str, files: list[Path], associations: int, receivers: int, roles: tuple[str, ...], scratch: Path
) -> Result:
    workdir = Path(tempfile.mkdtemp(prefix=f"ingest-{kind}-", dir=scratch))
    receiver: Receiver = {
        "node": lambda: Node(workdir, receivers, roles),
        "storescp": lambda: StoreScp(workdir),
        "orthanc": lambda: Orthanc(workdir),
    }[kind]()
    receiver.start()
    assert receiver.proc is not None
    sampler = Sampler(receiver.proc.pid)
    sampler.start()
    cpu_before = sampler.cpu_seconds()
    seconds = send(receiver, [files[i::associations] for i in range(associations)])
    cpu = sampler.cpu_seconds() - cpu_before
    sampler.stop.set()
    stored = receiver.stored()
    receiver.stop()  # the files stay until the run ends (see the module docstring)
    os.sync()  # and are on disk before the next run: storescp's unsynced writes must not slow it
    if stored != len(files):
        raise RuntimeError(f"{receiver.name}: {stored} of {len(files)} instances arrived")
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    return Result(receiver.name, associations, seconds, len(files), megabytes, cpu, sampler.peak_rss / 2**20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--receivers", type=int, default=0, help="node receiver processes (0 = cores)")
    parser.add_argument("--targets", nargs="+", default=["node", "storescp", "orthanc"])
    parser.add_argument(
        "--roles",
        nargs="+",
        default=["receiver"],
        choices=["receiver", "scheduler", "worker"],
        help="node roles to run (default: the receiver alone, as Orthanc and storescp only store)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs per receiver; the median is reported")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "msvlm-bench")
    args = parser.parse_args()

    data = args.scratch / f"ct-{args.count}x{args.rows}"
    if not data.exists() or len(list(data.rglob("*.dcm"))) != args.count:
        shutil.rmtree(data, ignore_errors=True)
        write_ct_series(data, args.count, rows=args.rows, seed=7)
    files = sorted(data.rglob("*.dcm"))
    receivers = args.receivers or os.cpu_count() or 1
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"{len(files)} CT instances {args.rows}x{args.rows}, {total_mb:.0f} MB;"
        f" {os.cpu_count()} cores; node receivers={receivers}, roles={','.join(args.roles)};"
        " fsync on for node and Orthanc"
    )
    runs_total = args.rounds * len(args.targets) * len(args.associations)
    needed = total_mb * 1e6 * runs_total * 1.1
    if shutil.disk_usage(args.scratch).free < needed:
        print(f"needs {needed / 1e9:.1f} GB free under {args.scratch} (every run's files are kept)")
        return 1
    for path in files:  # into the page cache: the first receiver must not pay for cold reads
        path.read_bytes()
    try:
        return _measure(args, files, receivers)
    finally:
        for workdir in args.scratch.glob("ingest-*"):
            shutil.rmtree(workdir, ignore_errors=True)


def _measure(args: argparse.Namespace, files: list[Path], receivers: int) -> int:
    results: list[Result] = []
    for associations in args.associations:
        runs: dict[str, list[Result]] = {kind: [] for kind in args.targets}
        for round_ in range(args.rounds):
            order = args.targets[round_ % len(args.targets) :] + args.targets[: round_ % len(args.targets)]
            for kind in order:
                runs[kind].append(
                    run_one(kind, files, associations, receivers, tuple(args.roles), args.scratch)
                )
        for kind in args.targets:
            ranked = sorted(runs[kind], key=lambda r: r.images_per_second)
            result = ranked[len(ranked) // 2]
            results.append(result)
            print(
                f"  {result.receiver:<15} assoc={associations}  {result.images_per_second:7.1f} img/s "
                f"(runs {ranked[0].images_per_second:.0f}-{ranked[-1].images_per_second:.0f}) "
                f"{result.megabytes / result.seconds:7.1f} MB/s  cpu={result.cpu_seconds:6.1f} core-s "
                f"({result.cpu_share:4.0%} of machine)  peak RSS={result.peak_rss_mb:6.0f} MB",
                flush=True,
            )
    print("\nratios (msvlm-node / reference, median images/s):")
    for associations in args.associations:
        ours = next(
            (r for r in results if r.receiver == "msvlm-node" and r.associations == associations), None
        )
        if ours is None:
            continue
        for ref in (r for r in results if r.associations == associations and r.receiver != "msvlm-node"):
            print(
                f"  assoc={associations}: vs {ref.receiver:<15} "
                f"{ours.images_per_second / ref.images_per_second:5.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
