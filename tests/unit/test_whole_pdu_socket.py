"""`WholePduSocket.recv`: whole reads over a real socket pair, short reads, and the size cap.

The end-to-end path (dcmtk storescu over plain TCP and TLS, byte-identical storage) is
covered by the receive and TLS integration tests; these pin the edge cases.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from node.receive import WholePduSocket


@pytest.fixture
def pair() -> Iterator[tuple[WholePduSocket, socket.socket]]:
    ours, theirs = socket.socketpair()
    sock = WholePduSocket.__new__(WholePduSocket)  # no association: only recv is exercised
    sock.socket = ours
    sock._assoc = SimpleNamespace(acceptor=SimpleNamespace(maximum_length=1024 * 1024))  # type: ignore[assignment]
    yield sock, theirs
    ours.close()
    theirs.close()


def test_reads_exactly_the_requested_bytes_sent_in_pieces(pair: tuple[WholePduSocket, socket.socket]) -> None:
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


def test_a_closed_connection_returns_what_arrived(pair: tuple[WholePduSocket, socket.socket]) -> None:
    sock, peer = pair
    peer.sendall(b"abc")
    peer.shutdown(socket.SHUT_WR)
    assert sock.recv(10) == bytearray(b"abc")


def test_a_declared_length_past_our_limit_is_not_allocated_up_front(
    pair: tuple[WholePduSocket, socket.socket], monkeypatch: pytest.MonkeyPatch
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
