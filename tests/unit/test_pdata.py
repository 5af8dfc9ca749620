"""`node.pdata`: the C-STORE fast path's framing, against pynetdicom's own encoder and decoder.

PDUs are made by pynetdicom's DIMSE message encoder (as a pynetdicom SCU would send
them) and our responses are read back with its decoder, so the byte layout is checked
against an independent implementation. The receiver integration tests run the same
path end to end with dcmtk's storescu.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_messages import C_STORE_RQ as C_STORE_RQ_MESSAGE
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from node.pdata import ProtocolError, StoreRequest, StoreStream, split_pdvs, store_response_pdu

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
INSTANCE = "1.2.826.0.1.3680043.8.498.1"


def _store_pdus(
    data_set: bytes, *, context_id: int = 1, max_pdu: int = 16384, message_id: int = 7
) -> list[bytes]:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = INSTANCE
    primitive.Priority = 0
    primitive.DataSet = BytesIO(data_set)
    message = C_STORE_RQ_MESSAGE()
    message.primitive_to_message(primitive)
    return [_encode(p) for p in message.encode_msg(context_id, max_pdu)]


def _echo_pdus(*, context_id: int = 3, message_id: int = 9) -> list[bytes]:
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return [_encode(p) for p in message.encode_msg(context_id, 16384)]


def _encode(primitive: object) -> bytes:
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)  # type: ignore[arg-type]
    return bytes(pdu.encode())


def _body(pdu: bytes) -> memoryview:
    assert pdu[0] == 0x04
    return memoryview(pdu)[6:]


class Recorder:
    """A StoreStream with its store and send recorded."""

    def __init__(self, contexts: dict[int, str] | None = None, status: int = 0, comment: str = ""):
        self.stored: list[tuple[StoreRequest, bytes]] = []
        self.sent: list[bytes] = []
        self.stream = StoreStream(
            lambda: {1: EXPLICIT_LE} if contexts is None else contexts,
            lambda request, data: self.stored.append((request, bytes(data))) or (status, comment),
            self.sent.append,
        )

    def feed_all(self, pdus: list[bytes]) -> list[bytes]:
        handed_on = [self.stream.feed(_body(pdu)) for pdu in pdus]
        return [pdu for pdu in handed_on if pdu]


def _primitive(pdu: bytes) -> P_DATA:
    decoded = P_DATA_TF()
    decoded.decode(pdu)
    return decoded.to_primitive()


def _decode_response(pdu: bytes) -> C_STORE:
    message = C_STORE_RSP()
    assert message.decode_msg(_primitive(pdu))
    return message.message_to_primitive()  # type: ignore[return-value]


@pytest.fixture
def data_set() -> Iterator[bytes]:
    yield os.urandom(300_001) + b"\x00"  # an even length, as a DICOM data set has


def test_a_fragmented_store_is_stored_whole_and_answered(data_set: bytes) -> None:
    pdus = _store_pdus(data_set, max_pdu=16384)
    assert len(pdus) > 10  # the data set spans many PDUs
    recorder = Recorder()
    assert recorder.feed_all(pdus) == []
    [(request, stored)] = recorder.stored
    assert stored == data_set
    assert request == StoreRequest(1, 7, CT, INSTANCE, EXPLICIT_LE)
    [response] = recorder.sent
    answer = _decode_response(response)
    assert (answer.Status, answer.MessageIDBeingRespondedTo) == (0x0000, 7)
    assert (answer.AffectedSOPClassUID, answer.AffectedSOPInstanceUID) == (CT, INSTANCE)
    assert answer.ErrorComment is None


def test_several_pdvs_in_one_pdu_and_back_to_back_messages(data_set: bytes) -> None:
    first = [split_pdvs(_body(p)) for p in _store_pdus(data_set[:1000], message_id=1)]
    second = [split_pdvs(_body(p)) for p in _store_pdus(data_set[:2000], message_id=2)]
    items = [item for pdu in first + second for item in pdu]  # both messages in one PDU
    body = b"".join(len(f).__add__(2).to_bytes(4, "big") + bytes([c, h]) + bytes(f) for c, h, f in items)
    recorder = Recorder()
    assert recorder.stream.feed(memoryview(body)) == b""
    assert [(r.message_id, len(d)) for r, d in recorder.stored] == [(1, 1000), (2, 2000)]
    assert len(recorder.sent) == 2


def test_a_failure_status_carries_its_error_comment(data_set: bytes) -> None:
    recorder = Recorder(status=0xC000, comment="dataset truncated: Pixel Data declares more")
    recorder.feed_all(_store_pdus(data_set[:100]))
    answer = _decode_response(recorder.sent[0])
    assert answer.Status == 0xC000
    assert answer.ErrorComment == "dataset truncated: Pixel Data declares more"


def test_an_echo_is_handed_to_pynetdicom_unchanged_and_the_next_store_is_ours(data_set: bytes) -> None:
    recorder = Recorder()
    echo = _echo_pdus()
    assert recorder.feed_all(echo) == echo  # rebuilt byte for byte
    assert recorder.stored == [] and recorder.sent == []
    recorder.feed_all(_store_pdus(data_set[:500]))
    assert len(recorder.stored) == 1


def test_a_command_split_across_pdus_goes_to_pynetdicom_with_its_data_set(data_set: bytes) -> None:
    split = _store_pdus(data_set[:3000], max_pdu=64)  # the command itself needs several PDUs
    assert len(split_pdvs(_body(split[0]))) == 1 and split_pdvs(_body(split[0]))[0][1] == 0x01
    recorder = Recorder()
    assert recorder.feed_all(split) == split
    assert recorder.stored == []
    message = DIMSEMessage()  # pynetdicom reassembles what it was given into the request
    complete = [message.decode_msg(_primitive(pdu)) for pdu in split]
    assert complete[-1] and message.data_set.getvalue() == data_set[:3000]  # type: ignore[union-attr]
    recorder.feed_all(_store_pdus(data_set[:10]))  # routed afresh after the handed-on message
    assert len(recorder.stored) == 1


def test_a_context_we_do_not_store_is_handed_on(data_set: bytes) -> None:
    recorder = Recorder(contexts={})
    pdus = _store_pdus(data_set[:100])
    assert recorder.feed_all(pdus) == pdus
    assert recorder.stored == []


def test_broken_framing_is_a_protocol_error(data_set: bytes) -> None:
    with pytest.raises(ProtocolError, match="does not fit"):
        split_pdvs(memoryview(b"\x00\x00\x01\x00\x01\x03abc"))
    with pytest.raises(ProtocolError, match="inside a PDV item header"):
        split_pdvs(memoryview(b"\x00\x00"))
    recorder = Recorder()
    command, *_ = _store_pdus(data_set[:100])
    recorder.stream.feed(_body(command))
    with pytest.raises(ProtocolError, match="inside the data set"):
        recorder.stream.feed(_body(command))  # a second command where the data set belongs


def test_response_pdu_length_fields_are_consistent() -> None:
    pdu = store_response_pdu(StoreRequest(5, 1, CT, INSTANCE + "1", EXPLICIT_LE), 0xA700, "disk full")
    assert int.from_bytes(pdu[2:6], "big") == len(pdu) - 6
    [(context_id, control, command)] = split_pdvs(memoryview(pdu)[6:])
    assert (context_id, control) == (5, 0x03)
    assert int.from_bytes(command[8:12], "little") == len(command) - 12  # (0000,0000) group length
