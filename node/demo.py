"""``msvlm-node demo``: the whole loop on a fresh machine, with no arguments.

Writes a phantom CT study with planted findings, starts a node on a free
loopback port with a temporary database and storage, sends the study by
C-STORE, waits for the SR at a temporary destination SCP, and prints the
report, the findings and the timings from the ledger.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from node.admin import finding_line
from node.errors import NodeError

SR_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sr_text(ds: Dataset) -> list[str]:
    """The SR's content tree as indented 'Concept: value' lines."""
    lines: list[str] = []

    def walk(items: list[Dataset], depth: int) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if item.ValueType == "TEXT":
                value = item.TextValue
            elif item.ValueType == "CODE":
                value = item.ConceptCodeSequence[0].CodeMeaning
            elif item.ValueType == "CONTAINER":
                value = ""
            elif item.ValueType == "IMAGE":
                value = f"image {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID}"
            else:
                continue
            lines.append(f"{'  ' * depth}{name}: {value}".rstrip(": "))
            if "ContentSequence" in item:
                walk(list(item.ContentSequence), depth + 1)

    walk(list(ds.get("ContentSequence", [])), 0)
    return lines


def run_demo(workdir: Path | None = None, timeout: float = 600.0) -> int:
    from models.phantom import Finding, PhantomSpec, generate_study, write_study
    from models.phantom.findings import SITE_ATTRIBUTES, site_of

    root = workdir or Path(tempfile.mkdtemp(prefix="msvlm-demo-"))
    study_dir = root / "study"
    spec = PhantomSpec(
        modality="CT",
        planes=("axial", "coronal"),
        phases=("non_contrast", "arterial"),
        findings=(
            Finding("lung_nodule", {"size_mm": 12, "lobe": "right upper lobe"}),
            Finding("pleural_effusion", {"side": "left"}),
        ),
        seed=2026,
        matrix=64,
        slices=32,
    )
    truth = write_study(generate_study(spec), study_dir)
    # with their sites, so that a reader can hold the SR's narrative against them (the demo
    # model reads whether a finding is there far better than where: README, "Sites")
    planted = [
        f.key
        if (site := site_of(f.key, f.attributes)) is None
        else f"{f.key} ({SITE_ATTRIBUTES[f.key]}: {site})"
        for f in truth.findings
        if f.present
    ]
    print(f"demo: wrote a phantom CT study to {study_dir} (planted: {', '.join(planted)})")

    received: queue.Queue[Dataset] = queue.Queue()

    def on_store(event: evt.Event) -> int:
        received.put(event.dataset)
        return 0x0000

    dest_port = _free_port()
    destination = AE(ae_title="DEMOPACS")
    for uid in SR_CLASSES:
        destination.add_supported_context(uid)
    server = destination.start_server(
        ("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None  # block=False returns the running server

    port = _free_port()
    api_port = _free_port()
    config = root / "node.toml"
    config.write_text(f"""[node]
port = {port}
[api]
port = {api_port}
[storage]
path = "{root / "storage"}"
min_free_mb = 64
[database]
url = "sqlite:///{root / "ledger.db"}"
[settle]
after_release_seconds = 1.0
interval_seconds = 0.5
[worker]
poll_seconds = 0.5
[delivery]
interval_seconds = 0.5
[[delivery.destinations]]
name = "demo-pacs"
ae_title = "DEMOPACS"
host = "127.0.0.1"
port = {dest_port}
[[security.peers]]
ae_title = "DEMOSCU"
host = "127.0.0.1"
""")
    log_path = root / "node.log"
    env = {**os.environ, "MSVLM_NODE_CONFIG": str(config)}
    with log_path.open("wb") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "node", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while "receive.listening" not in log_path.read_text(errors="replace"):
            if node.poll() is not None or time.monotonic() > deadline:
                raise NodeError(f"the node did not start; see {log_path}:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        files = sorted(study_dir.rglob("*.dcm"))
        scu = AE(ae_title="DEMOSCU")
        datasets = [dcmread(f) for f in files]
        for uid in sorted({ds.SOPClassUID for ds in datasets}):
            scu.add_requested_context(uid)
        started = time.monotonic()
        assoc = scu.associate("127.0.0.1", port, ae_title="MSVLM")
        if not assoc.is_established:
            raise NodeError("the node refused the demo association")
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if int(status.Status) != 0:
                raise NodeError(f"C-STORE failed with 0x{int(status.Status):04X}")
        assoc.release()
        print(f"demo: sent {len(files)} instances to the node on port {port}; waiting for the SR ...")
        try:
            sr = received.get(timeout=timeout)
        except queue.Empty as exc:
            raise NodeError(f"no SR arrived within {timeout:.0f}s; see {log_path}") from exc
        elapsed = time.monotonic() - started
        print(
            f"demo: SR received by DEMOPACS {elapsed:.1f}s after the study was sent "
            f"(SOP Instance UID {sr.SOPInstanceUID})\n"
        )
        for line in _sr_text(sr):
            print("  " + line)
        shown = subprocess.run(
            [sys.executable, "-m", "node", "jobs", "list", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        job_id = json.loads(shown.stdout)[0]["id"]
        detail = json.loads(
            subprocess.run(
                [sys.executable, "-m", "node", "jobs", "show", str(job_id), "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        t = detail["timings"]
        print(
            "\ntimings: "
            + ", ".join(
                f"{k.removesuffix('_seconds')} {v:.2f}s"
                for k, v in t.items()
                if k.endswith("_seconds") and v is not None
            )
        )
        print("findings: " + ", ".join(finding_line(f) for f in detail["result"]["findings"]))
        print(f"\ndemo: ledger {root / 'ledger.db'}, log {log_path}")
        print(
            f"demo: the node's dashboard was at http://127.0.0.1:{api_port}/jobs/{job_id} while it ran; "
            f"re-run with `msvlm-node --config {config} serve` to browse it"
        )
        return 0
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()
        server.shutdown()
