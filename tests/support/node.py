"""Run the real node (``python -m node serve``) as a subprocess for tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def write_config(path: Path, tables: dict[str, dict[str, Any]], peers: list[dict[str, Any]]) -> Path:
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    for peer in peers:
        lines.append("[[security.peers]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in peer.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class NodeProcess:
    """``msvlm-node serve`` on a free loopback port with its own storage and database."""

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        *,
        ae_title: str = "MSVLM",
        extra: dict[str, dict[str, Any]] | None = None,
        peers: list[dict[str, Any]] | None = None,
        roles: tuple[str, ...] = ("receiver",),
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.api_port = free_port()
        self.ae_title = ae_title
        self.storage = workdir / "storage"
        self.database_url = database_url
        tables: dict[str, dict[str, Any]] = {
            "node": {
                "ae_title": ae_title,
                "host": "127.0.0.1",
                "port": self.port,
                "drain_seconds": 10,
                "roles": list(roles),
            },
            "storage": {"path": str(self.storage), "min_free_mb": 16},
            "database": {"url": database_url},
            "logging": {"level": "DEBUG"},
            "api": {"port": self.api_port},
        }
        for table, values in (extra or {}).items():
            tables.setdefault(table, {}).update(values)
        peers = peers if peers is not None else [{"ae_title": "STORESCU", "host": "127.0.0.1"}]
        self.config = write_config(workdir / "node.toml", tables, peers)
        self.log_path = workdir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> NodeProcess:
        env = {**os.environ, "MSVLM_NODE_CONFIG": str(self.config), "PYTHONPATH": str(REPO)}
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "serve"],
            cwd=self.workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            if "receive.listening" in self.log():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"node did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def problems(self, limit: int = 40) -> str:
        """The node's WARNING and ERROR lines (the last ``limit``), for assertion messages."""
        lines = [
            line
            for line in self.log().splitlines()
            if (" WARNING " in line or " ERROR " in line)
            and "maximum number of running instances" not in line  # APScheduler's skipped ticks
        ]
        return "\n".join(lines[-limit:])

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
