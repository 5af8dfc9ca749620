"""An association whose row cannot be written still gets its state, at once.

The C-STORE fast path waits for that state before its first store
(``ReceiveContext.wait_for_state``); with the database down it must not sit out
the whole ACSE timeout per association, and the close must not write a row.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from pynetdicom import evt
from sqlalchemy.exc import OperationalError

from node.config import Settings
from node.receive import ReceiveContext, handle_accepted, handle_ended


class _DownIndexer:
    def __init__(self) -> None:
        self.closed: list[int] = []

    def open_association(self, **_: Any) -> int:
        raise OperationalError("INSERT INTO associations", {}, Exception("database is down"))

    def close_association(self, association_id: int, **_: Any) -> None:
        self.closed.append(association_id)


class _Association:  # hashable, as pynetdicom's is: the context keys its states by association
    requestor = SimpleNamespace(ae_title="STORESCU ", address="127.0.0.1", port=4242)


def test_a_failed_association_row_still_registers_its_state_and_skips_the_close() -> None:
    indexer = _DownIndexer()
    ctx = ReceiveContext(settings=Settings(), store=cast(Any, None), indexer=cast(Any, indexer), tls=False)
    assoc = _Association()
    event = cast(Any, SimpleNamespace(assoc=assoc, event=evt.EVT_RELEASED))

    handle_accepted(event, ctx)

    state = ctx.wait_for_state(cast(Any, assoc), timeout=30.0)  # None only after a timeout
    assert state is not None and state.row_id is None
    handle_ended(event, ctx)
    assert indexer.closed == []
    assert ctx.state(cast(Any, assoc)) is None
