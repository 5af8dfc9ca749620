"""An association whose row cannot be written still gets its state, at once.

The C-STORE fast path waits for that state before its first store
(``ReceiveContext.wait_for_state``); with the database unusable it must not sit out
the whole ACSE timeout per association, and the close must not try to write a row.
The database here is a real SQLite file without the node's tables, so every write
the indexer attempts fails as a broken database would make it fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pynetdicom import evt
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from node.config import Settings
from node.index import Indexer
from node.receive import ReceiveContext, handle_accepted, handle_ended


class _Association:  # hashable, as pynetdicom's is: the context keys its states by association
    requestor = SimpleNamespace(ae_title="STORESCU ", address="127.0.0.1", port=4242)


@pytest.fixture
def broken_indexer(tmp_path: Path) -> Iterator[Indexer]:
    engine = create_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")
    indexer = Indexer(engine, sessionmaker(engine))
    yield indexer
    indexer.close()
    engine.dispose()


def test_a_failed_association_row_still_registers_its_state_and_skips_the_close(
    broken_indexer: Indexer, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = ReceiveContext(settings=Settings(), store=cast(Any, None), indexer=broken_indexer, tls=False)
    assoc = _Association()
    event = cast(Any, SimpleNamespace(assoc=assoc, event=evt.EVT_RELEASED))

    handle_accepted(event, ctx)

    assert "receive.association_not_recorded" in caplog.text
    state = ctx.wait_for_state(cast(Any, assoc), timeout=30.0)  # None only after a timeout
    assert state is not None and state.row_id is None
    handle_ended(event, ctx)  # writing the close to this database would raise
    assert ctx.state(cast(Any, assoc)) is None
