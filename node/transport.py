"""pynetdicom's association transport, made to wait for events instead of polling.

Each pynetdicom association runs two threads that poll: the DUL reactor sleeps
1 ms, then asks ``select`` with a zero timeout whether the socket has data, and
the association reactor sleeps 1 ms, then looks at its DIMSE message queue.
Four associations are 8000 wake-ups a second, each taking the GIL from the
threads doing real work (the index writer, the handlers), which then wait for it
after every ``fsync`` or SQLite call. In ``bench/ingest.py`` a third to a half of
a receiver's Python time went to these loops.

This module keeps pynetdicom's reactors and state machine and changes only how
they wait:

- the DUL reactor no longer sleeps; its socket's ``ready`` blocks in ``select``
  on the connection and on a wake-up channel, which the DUL's outgoing queue writes
  to whenever the association thread queues a PDU (a C-STORE response), so the
  reactor wakes at once for either direction and not at all in between;
- the association reactor's non-blocking look at the DIMSE queue waits up to
  :data:`MESSAGE_WAIT_SECONDS` for a message, so it wakes when one arrives, and
  its 1 ms nap per turn is skipped (:class:`_ReactorClock`).

Both waits are bounded (:data:`SOCKET_WAIT_SECONDS`,
:data:`MESSAGE_WAIT_SECONDS`), so the reactors still see their timers, a
release or an abort within milliseconds. The whole-PDU read
(:meth:`EventSocket.recv`) is the other change: one ``recv_into`` per PDU
instead of pynetdicom's 4 KiB pieces.

With a :class:`~node.pdata.StoreStream` (the receiver gives one to each association),
the DUL reactor also hands every P-DATA-TF PDU of the established association to it:
C-STORE is answered there, in the reading thread (see :mod:`node.pdata`), and only
what it hands back reaches pynetdicom's state machine.

Written against pynetdicom 3.0 (``pyproject.toml`` bounds the version): it uses
the DUL's ``to_provider_queue``, ``event_queue`` and ``_run_loop_delay`` and the
DIMSE provider's ``msg_queue``, which :func:`make_event_driven` checks exist.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pynetdicom.association as pynetdicom_association
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler

from node.pdata import ProtocolError, StoreStream

log = logging.getLogger(__name__)

#: longest the DUL reactor blocks in ``select`` with nothing to do (timers, kill flag)
SOCKET_WAIT_SECONDS = 0.02
#: longest the association reactor waits on its DIMSE queue (release, abort, timeouts)
MESSAGE_WAIT_SECONDS = 0.02


class _WakingQueue(queue.Queue[Any]):
    """The DUL's outgoing queue: putting a primitive wakes the reactor's ``select``."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _WaitingQueue(queue.Queue[Any]):
    """The DIMSE message queue: the reactor's non-blocking ``get`` waits briefly for a message."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            return super().get(True, MESSAGE_WAIT_SECONDS)
        return super().get(block, timeout)


class _ReactorClock:
    """The ``time`` module as ``pynetdicom.association`` sees it, minus one nap.

    The association reactor sleeps 1 ms at the top of every turn before looking at its
    message queue: a millisecond added to every C-STORE, a tenth of an instance's time at
    ingest. In a thread that is an event-driven association (its queue already waits for
    messages) naps of at most 1 ms are skipped; every other sleep, and every other
    association (the node's own SCU deliveries), is untouched.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds <= 0.001:
            queue_ = getattr(getattr(threading.current_thread(), "dimse", None), "msg_queue", None)
            if isinstance(queue_, _WaitingQueue):
                return
        time.sleep(seconds)


class EventSocket(AssociationSocket):
    """pynetdicom's socket, reading whole PDUs and blocking in ``ready`` until there is work.

    Instances are made by changing the class of the socket pynetdicom built, then
    calling :meth:`enable_wakeup`; without it ``ready`` behaves as pynetdicom's.
    """

    #: reads up to this size are always allocated whole (association PDUs, small P-DATA)
    SMALL_PDU = 64 * 1024

    #: the wake-up channel, a socket pair rather than a pipe: once closed, a late ``wake``
    #: fails on the closed object instead of writing to a descriptor number reused by a file
    _wake_read: socket.socket | None = None
    _wake_write: socket.socket | None = None
    #: bytes read ahead and given back (:meth:`unread`); ``recv`` returns them first
    _unread: bytes = b""

    def unread(self, data: bytes | bytearray) -> None:
        """Give back bytes just read, for pynetdicom's own PDU reader to read again."""
        self._unread = bytes(data) + self._unread

    def enable_wakeup(self) -> None:
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)

    def wake(self) -> None:
        """Make a ``ready`` blocked in another thread return now (any thread may call it)."""
        channel = self._wake_write
        if channel is not None:
            with contextlib.suppress(OSError):  # buffer full (a wake is pending) or closed
                channel.send(b"\x01")

    @property
    def ready(self) -> bool:
        """Whether the peer sent data; waits for it unless the reactor has other work queued."""
        wake = self._wake_read
        sock = self.socket
        if wake is None:
            return bool(super().ready)
        if sock is None or self._is_connected is False:
            # closed: the reactor only waits to be stopped; pynetdicom would sleep 1 ms a turn
            with contextlib.suppress(OSError, ValueError):
                if select.select([wake], [], [], SOCKET_WAIT_SECONDS)[0]:
                    wake.recv(4096)
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes already buffered: select would not see them
        dul = self.assoc.dul
        busy = bool(dul.to_provider_queue.queue) or not dul.event_queue.empty()
        try:
            readable, _, _ = select.select([sock, wake], [], [], 0 if busy else SOCKET_WAIT_SECONDS)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed, as pynetdicom signals it
            return False
        if wake in readable:
            with contextlib.suppress(OSError):
                wake.recv(4096)
        return sock in readable

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` with as few ``recv`` calls as the kernel allows.

        pynetdicom reads in 4 KiB pieces: 128 calls for one 512x512 slice, each giving
        up and retaking the GIL behind the other associations' threads. Reading into
        one buffer of the PDU's size cut receive CPU by about 12%. The buffer is
        allocated up front, so only for PDUs within the size we advertised; a larger
        declared length (a peer breaking the limit, or lying to make us allocate)
        goes through pynetdicom's incremental read.
        """
        if self._unread:
            head, self._unread = self._unread[:nr_bytes], self._unread[nr_bytes:]
            return bytearray(head) + (self.recv(nr_bytes - len(head)) if nr_bytes > len(head) else b"")
        limit = max(self.SMALL_PDU, self.assoc.acceptor.maximum_length or 0)
        if nr_bytes > limit:
            return super().recv(nr_bytes)
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        with memoryview(buffer) as view:
            read = 0
            while read < nr_bytes:
                count = sock.recv_into(view[read:], nr_bytes - read)
                if not count:  # closed by the peer: return what arrived, as pynetdicom does
                    break
                read += count
        if read < nr_bytes:
            del buffer[read:]
        return buffer

    def close_wakeup(self) -> None:
        """Close the wake-up channel; the DUL reactor calls this as it ends."""
        for channel in (self._wake_read, self._wake_write):
            if channel is not None:
                channel.close()


class _EventDUL(DULServiceProvider):
    """pynetdicom's DUL provider, waking its reactor when asked to stop.

    Its reactor may be blocked in :attr:`EventSocket.ready` for up to
    :data:`SOCKET_WAIT_SECONDS`; pynetdicom's ``stop_dul`` spins until the thread
    ends, so the stop flag is followed by a wake-up.
    """

    def run(self) -> None:  # the thread's body (pynetdicom bound run_reactor as its target)
        try:
            super().run()
        finally:  # the connection may close long before the reactor ends: the channel lives to here
            if isinstance(self.socket, EventSocket):
                self.socket.close_wakeup()

    #: the association's C-STORE fast path; None hands every PDU to pynetdicom
    store_stream: StoreStream | None = None

    def _read_pdu_data(self) -> None:
        """Read one PDU: P-DATA-TF of an established association goes to the store stream first."""
        sock = self.socket
        stream = self.store_stream
        if stream is None or not isinstance(sock, EventSocket) or self.state_machine.current_state != "Sta6":
            super()._read_pdu_data()
            return
        try:
            header = sock.recv(6)
        except (OSError, TimeoutError):
            header = bytearray()
        if len(header) != 6 or header[0] != 0x04:
            sock.unread(header)  # not P-DATA (or a broken read): pynetdicom reads and judges it
            super()._read_pdu_data()
            return
        (length,) = struct.unpack_from(">I", header, 2)
        try:
            body = sock.recv(length)
        except (OSError, TimeoutError):
            body = bytearray()
        if len(body) != length:
            log.error("receive.connection_lost", extra={"received": len(body), "expected": length})
            self.event_queue.put("Evt17")  # transport connection closed, as pynetdicom signals it
            return
        try:
            handed_on = stream.feed(memoryview(body))
        except ProtocolError as exc:
            log.error("receive.protocol_error", extra={"reason": str(exc)})
            self.event_queue.put("Evt19")  # invalid PDU: pynetdicom's state machine aborts
            return
        if handed_on:
            self._hand_on(handed_on)

    def _hand_on(self, data: bytes) -> None:
        """Give a PDU to pynetdicom's state machine, as its own reader does after a read."""
        try:
            pdu, event = self._decode_pdu(bytearray(data))
        except Exception:
            log.exception("receive.undecodable_pdu")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._wake()
        return bool(super().stop_dul())

    def _wake(self) -> None:
        if isinstance(self.socket, EventSocket):
            self.socket.wake()


def make_event_driven(assoc: Association, store_stream: StoreStream | None = None) -> None:
    """Switch a freshly created acceptor association to :class:`EventSocket` and waiting queues.

    Call before the association starts (its reactors are not running yet); anything
    already queued is carried over. ``store_stream`` takes the association's P-DATA.
    """
    dul: Any = assoc.dul
    dimse: Any = assoc.dimse
    for name in ("to_provider_queue", "event_queue", "_run_loop_delay", "_recv_pdu", "_decode_pdu"):
        if not hasattr(dul, name):
            raise RuntimeError(f"pynetdicom changed: DULServiceProvider.{name} is gone")
    if not hasattr(dimse, "msg_queue"):
        raise RuntimeError("pynetdicom changed: DIMSEServiceProvider.msg_queue is gone")
    sock = dul.socket
    sock.__class__ = EventSocket
    sock.enable_wakeup()
    dul.__class__ = _EventDUL
    dul.store_stream = store_stream
    outgoing = _WakingQueue(sock.wake)
    outgoing.queue.extend(dul.to_provider_queue.queue)
    dul.to_provider_queue = outgoing
    messages = _WaitingQueue()
    messages.queue.extend(dimse.msg_queue.queue)
    dimse.msg_queue = messages
    dul._run_loop_delay = 0.0
    if not isinstance(pynetdicom_association.time, _ReactorClock):
        pynetdicom_association.time = _ReactorClock()  # type: ignore[assignment]


#: makes an association's store stream; a server offers one as ``store_stream_factory``
StoreStreamFactory = Callable[[Association], StoreStream]


class EventDrivenRequestHandler(RequestHandler):
    """pynetdicom's request handler, with each association made event-driven.

    When the server has a ``store_stream_factory``, each association also gets a
    :class:`~node.pdata.StoreStream` from it.
    """

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        factory: StoreStreamFactory | None = getattr(self.server, "store_stream_factory", None)
        make_event_driven(assoc, factory(assoc) if factory is not None else None)
        return assoc
