"""Scale-out on PostgreSQL: 2 receiver processes on one port, 3 workers, 4 parallel senders.

20 phantom studies; one worker is SIGKILLed mid-run. Every study must be
processed exactly once (one result each), and every SR delivered exactly once.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from node.schema import Association, Delivery, Job, Result
from tests.support import dcmtk
from tests.support.node import NodeProcess
from tests.support.pipeline import StoreScp, delivered, ledger, phantom, pipeline_node, start_worker, wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_receivers_three_workers_twenty_studies_one_worker_killed(
    node_factory: Callable[..., NodeProcess], tiny_model: Path, pacs: StoreScp, tmp_path: Path
) -> None:
    node = pipeline_node(
        node_factory, tiny_model, pacs.port, roles=("receiver", "scheduler"), extra={"node": {"receivers": 2}}
    ).start()
    studies = [
        phantom(
            tmp_path,
            seed=100 + i,
            phases=("non_contrast",),
            matrix=32,
            slices=12,
            include_localizer=False,
            include_dose_report=False,
            include_oblique=False,
        )
        for i in range(20)
    ]
    workers = {name: start_worker(node, name) for name in ("w1", "w2", "w3")}
    senders = []
    for k in range(4):  # 4 parallel storescu processes, 5 studies each (one association per study)
        script = " && ".join(
            " ".join(
                [
                    dcmtk.tool("storescu"),
                    "-aet",
                    "STORESCU",
                    "-aec",
                    "MSVLM",
                    "127.0.0.1",
                    str(node.port),
                    *map(str, files),
                ]
            )
            for files in studies[k::4]
        )
        senders.append(
            subprocess.Popen(
                ["bash", "-c", script],
                env=dcmtk.env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for sender in senders:
            _, err = sender.communicate(timeout=300)
            # storescu exits with the high byte of the last failed status (0xA7 = 167: out of resources)
            assert sender.returncode == 0, f"storescu exit {sender.returncode}: {err}\n{node.problems()}"
        # kill one worker as soon as it has a job in hand
        wait_for(
            lambda: ledger(
                node.database_url, select(Job.id).where(Job.state == "running", Job.worker == "w2")
            ),
            300,
            "w2 to claim a job",
            node,
        )
        workers["w2"].send_signal(signal.SIGKILL)
        wait_for(
            lambda: (
                ledger(
                    node.database_url, select(func.count()).select_from(Job).where(Job.state == "succeeded")
                )[0][0]
                == 20
            ),
            600,
            "20 succeeded jobs",
            node,
        )
        wait_for(lambda: delivered(node.database_url) >= 20, 120, "20 SRs delivered", node)
    finally:
        for sender in senders:
            if sender.poll() is None:
                sender.kill()
            sender.communicate()
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers.values():
            proc.wait(timeout=60)

    assert len(ledger(node.database_url, select(Job.id))) == 20
    per_study = ledger(
        node.database_url, select(Job.study_instance_uid, func.count()).group_by(Job.study_instance_uid)
    )
    assert len(per_study) == 20 and all(n == 1 for _, n in per_study)
    assert ledger(node.database_url, select(func.count()).select_from(Result))[0][0] == 20
    per_job = ledger(
        node.database_url,
        select(Delivery.job_id, func.count()).where(Delivery.state == "succeeded").group_by(Delivery.job_id),
    )
    assert len(per_job) == 20 and all(n == 1 for _, n in per_job)
    assert len(pacs.files()) == 20
    # both receiver processes took associations
    receivers = ledger(node.database_url, select(func.count(func.distinct(Association.receiver))))
    assert receivers[0][0] == 2
    # the killed worker's job was finished by another, with its attempt counted
    reclaimed = ledger(node.database_url, select(Job.attempts).where(Job.attempts > 1))
    assert reclaimed, "the job w2 held should have needed a second attempt"
