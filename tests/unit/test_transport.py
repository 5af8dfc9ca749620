"""`node.transport`: whole-PDU reads, a ``ready`` that waits for work, and reactors that do not spin.

The end-to-end path (dcmtk storescu over plain TCP and TLS, byte-identical storage) is
covered by the receive and TLS integration tests; these pin the edge cases, over real
sockets and a real pynetdicom association.
"""

from __future__ import annotations

import os
import queue
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import transport
from node.transport import EventDrivenRequestHandler, EventSocket


@pytest.fixture
def pair() -> Iterator[tuple[EventSocket, socket.socket]]:
    ours, theirs = socket.socketpair()
    sock = EventSocket.__new__(EventSocket)  # no association: only recv is exercised
    sock.socket = ours
    sock._assoc = SimpleNamespace(acceptor=SimpleNamespace(maximum_length=1024 * 1024))  # type: ignore[assignment]
    yield sock, theirs
    ours.close()
    theirs.close()


def test_reads_exactly_the_requested_bytes_sent_in_pieces(pair: tuple[EventSocket, socket.socket]) -> None:
    sock, peer = pair
    payload = os.urandom(300_000)

    def send() -> None:
        for start in range(0, len(payload), 7_001):
            peer.sendall(payload[start : start + 7_001])

    sender = threading.Thread(target=send)
    sender.start()
    first = sock.recv(6)
    rest = sock.recv(len(payload) - 6)
    sender.join()
    assert bytes(first + rest) == payload


def test_a_closed_connection_returns_what_arrived(pair: tuple[EventSocket, socket.socket]) -> None:
    sock, peer = pair
    peer.sendall(b"abc")
    peer.shutdown(socket.SHUT_WR)
    assert sock.recv(10) == bytearray(b"abc")


def test_a_declared_length_past_our_limit_is_not_allocated_up_front(
    pair: tuple[EventSocket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, peer = pair
    incremental: list[int] = []
    monkeypatch.setattr(
        "pynetdicom.transport.AssociationSocket.recv",
        lambda self, n: incremental.append(n) or bytearray(b"x"),
    )
    assert sock.recv(2**32 - 1) == bytearray(b"x")  # a peer claiming a 4 GiB PDU
    assert incremental == [2**32 - 1]
    peer.sendall(b"12345")
    assert sock.recv(5) == bytearray(b"12345")  # within the limit: our whole read
    assert incremental == [2**32 - 1]


@pytest.fixture
def waiting() -> Iterator[tuple[EventSocket, socket.socket, SimpleNamespace]]:
    """An EventSocket with its wake-up channel and stand-ins for the DUL's two queues."""
    ours, theirs = socket.socketpair()
    sock = EventSocket.__new__(EventSocket)
    sock.socket = ours
    sock._is_connected = True
    dul = SimpleNamespace(to_provider_queue=queue.Queue(), event_queue=queue.Queue())
    sock._assoc = SimpleNamespace(dul=dul, acceptor=SimpleNamespace(maximum_length=1024))  # type: ignore[assignment]
    sock.enable_wakeup()
    yield sock, theirs, dul
    sock.close_wakeup()
    ours.close()
    theirs.close()


def _ready_in_thread(sock: EventSocket) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(sock.ready))
    thread.start()
    return thread, result


def test_ready_waits_for_data_and_wakes_when_it_arrives(
    waiting: tuple[EventSocket, socket.socket, SimpleNamespace], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, peer, _ = waiting
    monkeypatch.setattr(transport, "SOCKET_WAIT_SECONDS", 30.0)  # only an event can end the wait
    thread, result = _ready_in_thread(sock)
    thread.join(0.2)
    assert thread.is_alive(), "ready returned with nothing to read"
    peer.sendall(b"\x04")
    thread.join(10)
    assert result == [True]


def test_a_wake_ends_the_wait_without_data(
    waiting: tuple[EventSocket, socket.socket, SimpleNamespace], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, _, _ = waiting
    monkeypatch.setattr(transport, "SOCKET_WAIT_SECONDS", 30.0)
    thread, result = _ready_in_thread(sock)
    thread.join(0.2)
    assert thread.is_alive()
    sock.wake()  # what the DUL's outgoing queue does when a response is queued
    thread.join(10)
    assert result == [False]
    # the wake-up was consumed: the next call waits again (here: its bounded wait)
    monkeypatch.setattr(transport, "SOCKET_WAIT_SECONDS", 0.05)
    assert sock.ready is False


def test_ready_does_not_wait_while_the_reactor_has_work_queued(
    waiting: tuple[EventSocket, socket.socket, SimpleNamespace], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, _, dul = waiting
    monkeypatch.setattr(transport, "SOCKET_WAIT_SECONDS", 30.0)
    dul.event_queue.put("Evt3")
    thread, result = _ready_in_thread(sock)
    thread.join(10)
    assert result == [False]


def test_a_late_wake_after_close_is_harmless(
    waiting: tuple[EventSocket, socket.socket, SimpleNamespace],
) -> None:
    sock, _, _ = waiting
    sock.close_wakeup()
    sock.wake()  # an association thread queuing a PDU after the reactor ended


def test_an_idle_association_does_not_spin_and_ends_cleanly() -> None:
    """A real pynetdicom association through our handler: echo, idle, release, nothing left running.

    pynetdicom's own reactor calls ``ready`` about once a millisecond; ours waits in
    ``select``, so an idle second costs a few dozen calls at most.
    """
    calls = [0]
    original = EventSocket.ready.fget
    assert original is not None

    def counting(self: EventSocket) -> bool:
        calls[0] += 1
        return bool(original(self))

    server_ae = AE(ae_title="SCP")
    server_ae.add_supported_context(Verification)
    server = server_ae.make_server(("127.0.0.1", 0), request_handler=EventDrivenRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(EventSocket, "ready", property(counting))
            client = AE(ae_title="SCU")
            client.add_requested_context(Verification)
            assoc = client.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0x0000
            before = calls[0]
            time.sleep(1.0)
            idle_calls = calls[0] - before
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
            assert assoc.is_released
        assert idle_calls < 200, f"the DUL reactor polled {idle_calls} times in an idle second"
        deadline = time.monotonic() + 10
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.active_associations == []
    finally:
        socketserver.TCPServer.shutdown(server)  # as node.receive.drain: not registered with the AE
        server.server_close()


def test_only_event_driven_association_threads_skip_the_reactor_nap(monkeypatch: pytest.MonkeyPatch) -> None:
    naps: list[float] = []
    monkeypatch.setattr(transport.time, "sleep", naps.append)

    class ReactorThread(threading.Thread):  # stands in for an Association (a Thread)
        def __init__(self, msg_queue: queue.Queue[object]) -> None:
            super().__init__(target=lambda: transport._ReactorClock.sleep(0.001))
            self.dimse = SimpleNamespace(msg_queue=msg_queue)

    for thread in (ReactorThread(transport._WaitingQueue()), ReactorThread(queue.Queue())):
        thread.start()
        thread.join()
    transport._ReactorClock.sleep(0.001)  # the test's own thread: no association at all
    transport._ReactorClock.sleep(0.01)  # longer sleeps are never skipped
    # skipped only in the event-driven association; our SCU deliveries keep pynetdicom's nap
    assert naps == [0.001, 0.001, 0.01]
