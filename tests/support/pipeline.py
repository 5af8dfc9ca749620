"""Helpers for pipeline tests: the node with all roles, dcmtk peers, phantom studies, the ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select

from models.phantom import PhantomSpec, generate_study, write_study
from node.schema import Delivery
from tests.support import dcmtk
from tests.support.node import REPO, NodeProcess, free_port

FAST = {
    "settle": {"after_release_seconds": 1.0, "interval_seconds": 0.3, "quiet_seconds": 30.0},
    "worker": {"poll_seconds": 0.3, "lease_seconds": 4.0},
    "delivery": {
        "interval_seconds": 0.3,
        "backoff_seconds": 0.5,
        "max_backoff_seconds": 2.0,
        "timeout_seconds": 5.0,
    },
}


class StoreScp:
    """dcmtk storescp as the PACS that receives our SRs."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreScp:
        self.proc = subprocess.Popen(
            [dcmtk.tool("storescp"), "-aet", "PACS", "-od", str(self.directory), str(self.port)],
            env=dcmtk.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        return self

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def destination(port: int) -> dict[str, Any]:
    return {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port}]}


def pipeline_node(
    node_factory: Callable[..., NodeProcess],
    model: Path,
    dest_port: int,
    roles: tuple[str, ...] = ("receiver", "scheduler", "worker"),
    extra: dict[str, dict[str, Any]] | None = None,
) -> NodeProcess:
    tables: dict[str, dict[str, Any]] = {k: dict(v) for k, v in FAST.items()}
    tables["model"] = {"path": str(model)}
    tables["delivery"] = {**tables["delivery"], **destination(dest_port)}
    for key, values in (extra or {}).items():
        tables.setdefault(key, {}).update(values)
    return node_factory(extra=tables, roles=roles)


def phantom(tmp_path: Path, seed: int, **spec: Any) -> list[Path]:
    options: dict[str, Any] = {
        "modality": "CT",
        "planes": ("axial",),
        "phases": ("non_contrast", "arterial"),
        "seed": seed,
        "matrix": 48,
        "slices": 16,
    }
    options.update(spec)
    out = tmp_path / f"phantom-{seed}"
    write_study(generate_study(PhantomSpec(**options)), out)
    return sorted(out.rglob("*.dcm"))


def send(node: NodeProcess, files: list[Path], *options: str) -> None:
    result = dcmtk.run(
        "storescu",
        *options,
        "-aet",
        "STORESCU",
        "-aec",
        node.ae_title,
        "127.0.0.1",
        str(node.port),
        *map(str, files),
    )
    assert result.returncode == 0, result.stderr


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, node: NodeProcess | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{node.log()[-4000:]}" if node else ""))


def ledger(url: str, stmt: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(stmt).all())
    finally:
        engine.dispose()


def delivered(url: str) -> int:
    """Deliveries the node has recorded as succeeded.

    Wait on this rather than on the files at the PACS: the peer writes the SR before its
    C-STORE response reaches the node, so a file can be there while its row still says sending.
    """
    stmt = select(func.count()).select_from(Delivery).where(Delivery.state == "succeeded")
    return int(ledger(url, stmt)[0][0])


def cli(node: NodeProcess, *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "node", "--config", str(node.config), *args, "--json"],
        capture_output=True,
        text=True,
        cwd=node.workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def start_worker(node: NodeProcess, name: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MSVLM_NODE_CONFIG": str(node.config),
        "PYTHONPATH": str(REPO),
        "MSVLM_NODE_WORKER__NAME": name,
    }
    with (node.workdir / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "node", "worker"],
            cwd=node.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
