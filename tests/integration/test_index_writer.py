"""The index writer's group commit, on SQLite and PostgreSQL.

Association threads hand rows to one writer thread that commits them in batches;
each caller must still learn its own outcome, and a conflicting row in a batch must
not take the other rows of that batch down with it.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from node.db import create_db_engine, session_factory, upgrade
from node.errors import DatabaseError
from node.index import Indexer, InstanceInfo, RejectedInstance, WriteLock
from node.schema import Instance, Series, Study
from node.statuses import Status

pytestmark = pytest.mark.integration

CT = "1.2.840.10008.5.1.4.1.1.2"


def _info(study: str, series: str, sop: str | None = None) -> InstanceInfo:
    return InstanceInfo(
        sop_class_uid=CT,
        sop_instance_uid=sop or generate_uid(),
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid=str(ExplicitVRLittleEndian),
        instance_number=1,
        own_output=False,
        study={"study_description": "writer test"},
        series={"modality": "CT", "sop_class_uid": CT, "own_output": False},
    )


def _record(indexer: Indexer, info: InstanceInfo) -> None:
    indexer.record_instance(info, path=f"{info.sop_instance_uid}.dcm", size=10, association_id=None)


@pytest.fixture
def indexer(database_url: str) -> Indexer:
    engine = create_db_engine(database_url)
    upgrade(engine)
    return Indexer(engine, session_factory(engine))


def test_concurrent_rows_are_all_committed_in_fewer_transactions(indexer: Indexer) -> None:
    study, series = generate_uid(), generate_uid()
    infos = [_info(study, series) for _ in range(400)]
    commits = 0
    original = indexer._commit

    def counting(batch):  # type: ignore[no-untyped-def]
        nonlocal commits
        commits += 1
        original(batch)

    indexer._commit = counting  # type: ignore[method-assign]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda info: _record(indexer, info), infos))
    indexer.close()
    with indexer.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Instance)).scalar_one() == 400
        assert conn.execute(select(func.count()).select_from(Series)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(Study)).scalar_one() == 1
    assert commits < 400, "sixteen threads writing at once should have shared transactions"
    indexer.engine.dispose()


def test_a_conflicting_row_fails_alone_within_its_batch(indexer: Indexer) -> None:
    study, series = generate_uid(), generate_uid()
    taken = _info(study, series)
    _record(indexer, taken)
    other_series = generate_uid()
    # The same SOP Instance UID in another series, and a known series claimed by another
    # study, queued together with good rows so that they share one transaction.
    bad_sop = _info(study, other_series, sop=taken.sop_instance_uid)
    bad_series = _info(generate_uid(), series)
    good = [_info(study, other_series) for _ in range(20)]
    indexer._series_study.clear()  # as in a fresh process: the conflicts are found in the database
    outcomes: dict[str, BaseException | None] = {}
    barrier = threading.Barrier(len(good) + 2)

    def send(info: InstanceInfo) -> None:
        barrier.wait()
        try:
            _record(indexer, info)
            outcomes[info.sop_instance_uid + info.series_instance_uid] = None
        except RejectedInstance as exc:
            outcomes[info.sop_instance_uid + info.series_instance_uid] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in [bad_sop, bad_series, *good]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    indexer.close()
    sop_error = outcomes[bad_sop.sop_instance_uid + bad_sop.series_instance_uid]
    series_error = outcomes[bad_series.sop_instance_uid + bad_series.series_instance_uid]
    assert isinstance(sop_error, RejectedInstance) and sop_error.status == Status.CONFLICTING_INSTANCE
    assert "another series" in str(sop_error)
    assert isinstance(series_error, RejectedInstance) and series_error.status == Status.CONFLICTING_INSTANCE
    assert "another study" in str(series_error)
    assert all(outcomes[g.sop_instance_uid + g.series_instance_uid] is None for g in good)
    with indexer.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Instance)).scalar_one() == 21
        # the rejected series claim left no study behind
        assert conn.execute(select(func.count()).select_from(Study)).scalar_one() == 1
    indexer.engine.dispose()


def test_a_failed_transaction_fails_every_waiter_and_a_stopped_writer_refuses(indexer: Indexer) -> None:
    def broken(batch):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk I/O error")

    indexer._commit = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="disk I/O error"):
        _record(indexer, _info(generate_uid(), generate_uid()))
    indexer.close()
    with pytest.raises(DatabaseError, match="stopped"):
        _record(indexer, _info(generate_uid(), generate_uid()))
    indexer.engine.dispose()


def _hold_lock(
    path: str, locked: multiprocessing.synchronize.Event, release: multiprocessing.synchronize.Event
) -> None:
    lock = WriteLock(Path(path))
    with lock.held():
        locked.set()
        release.wait(30)
    lock.close()


def test_write_lock_excludes_another_process(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db.write-lock"
    context = multiprocessing.get_context("spawn")
    locked, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(path), locked, release))
    holder.start()
    assert locked.wait(30)
    ours = WriteLock(path)
    acquired = threading.Event()

    def take() -> None:
        with ours.held():
            acquired.set()

    taker = threading.Thread(target=take)
    taker.start()
    assert not acquired.wait(0.5), "the lock was taken while another process held it"
    release.set()
    assert acquired.wait(30)
    taker.join()
    holder.join(30)
    ours.close()
