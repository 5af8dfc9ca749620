"""C-STORE on the data path: P-DATA PDUs to stored instances in the reading thread.

Why: pynetdicom turns each received instance into a chain of objects and thread
hand-offs — PDV items, a state-machine action, a DIMSE message assembled and
decoded by pydicom, a queue to the association thread, a service class that
builds a C-STORE primitive (validating its UIDs with regular expressions), an
event, a response data set encoded by pydicom, a queue back to the reading
thread. At ingest that was about 60% of a receiver's Python time, and each
hand-off waits for the GIL behind the other associations' threads.

What: in an established association the DUL reactor hands each P-DATA-TF PDU
to a :class:`StoreStream`. It splits the PDVs and assembles each message's
command set. A C-STORE-RQ on an accepted presentation context is handled here:
its data set fragments are gathered, the instance goes to the same store
function the pynetdicom handler uses (so statuses, rows and logs are the same),
and the C-STORE-RSP is encoded and sent from this thread. Every other message
— C-ECHO, a command split across PDUs, a context we did not accept, anything
unexpected — is handed to pynetdicom unchanged, as P-DATA-TF PDUs rebuilt from
its PDVs, so its state machine, DIMSE provider and handlers deal with it as
before. A PDU that carries part of such a message is handed over whole from
that PDV on, and so is the rest of the message.

Order: the fast path answers in the reading thread while a message handed to
pynetdicom is answered by the association thread. Both are in order because a
requestor waits for each response before its next request: we accept one
outstanding operation (pynetdicom's default, no asynchronous operations window).

Not raised on the fast path: pynetdicom's ``EVT_DATA_RECV``, ``EVT_PDU_RECV``,
``EVT_DIMSE_RECV`` and ``EVT_C_STORE`` (the node binds none of them but
``EVT_C_STORE``, which the fast path replaces).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

#: PS3.7 9.3.1.1: command field values
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
#: Command Data Set Type meaning "no data set follows"
NO_DATA_SET = 0x0101
#: the message control header's bits (PS3.8 E.2)
_COMMAND = 0x01
_LAST = 0x02

_PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context ID, message control header
_ELEMENT_HEADER = struct.Struct("<HHI")  # implicit VR little endian: group, element, length


class ProtocolError(Exception):
    """The peer broke the P-DATA framing (PS3.8 9.3.5); the association is aborted."""


@dataclass(frozen=True)
class StoreRequest:
    """The C-STORE-RQ command, as the store function needs it."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


#: stores one instance (its data set as received) and answers ``(status, error comment)``
StoreFunction = Callable[[StoreRequest, bytearray], tuple[int, str]]


def split_pdvs(body: memoryview) -> list[tuple[int, int, memoryview]]:
    """The PDV items of a P-DATA-TF PDU body: (context ID, control header, fragment)."""
    items = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < _PDV_HEADER.size:
            raise ProtocolError("P-DATA-TF ends inside a PDV item header")
        length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            raise ProtocolError(f"PDV item length {length} does not fit its P-DATA-TF PDU")
        items.append((context_id, control, body[offset + 6 : offset + 4 + length]))
        offset += 4 + length
    return items


def decode_command(data: bytes) -> dict[int, bytes]:
    """A command set's elements (implicit VR little endian, PS3.7 6.3.1), raw values by tag."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < _ELEMENT_HEADER.size:
            raise ProtocolError("command set ends inside an element header")
        group, element, length = _ELEMENT_HEADER.unpack_from(data, offset)
        offset += _ELEMENT_HEADER.size
        if offset + length > end:
            raise ProtocolError(f"command element ({group:04X},{element:04X}) runs past the command set")
        elements[group << 16 | element] = data[offset : offset + length]
        offset += length
    return elements


def _us(elements: dict[int, bytes], tag: int) -> int | None:
    value = elements.get(tag)
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None


def _ui(elements: dict[int, bytes], tag: int) -> str | None:
    value = elements.get(tag)
    return value.decode("ascii", "replace").rstrip("\0 ") if value else None


def _element(tag: int, value: bytes) -> bytes:
    return _ELEMENT_HEADER.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def store_response_pdu(request: StoreRequest, status: int, comment: str) -> bytes:
    """The whole P-DATA-TF PDU of a C-STORE-RSP: one command PDV, last fragment.

    The same elements pynetdicom sends (PS3.7 9.3.1.2): the request's SOP Class and
    Instance UIDs, its Message ID, the status and, for a failure, the Error Comment.
    """
    body = b"".join(
        (
            _element(0x00000002, _even(request.sop_class_uid.encode("ascii", "replace"), b"\0")),
            _element(0x00000100, struct.pack("<H", C_STORE_RSP)),
            _element(0x00000120, struct.pack("<H", request.message_id)),
            _element(0x00000800, struct.pack("<H", NO_DATA_SET)),
            _element(0x00000900, struct.pack("<H", status)),
            _element(0x00000902, _even(comment[:64].encode("ascii", "replace"), b" ")) if comment else b"",
            _element(0x00001000, _even(request.sop_instance_uid.encode("ascii", "replace"), b"\0")),
        )
    )
    command = _element(0x00000000, struct.pack("<I", len(body))) + body
    pdv = _PDV_HEADER.pack(len(command) + 2, request.context_id, _COMMAND | _LAST) + command
    return struct.pack(">BBI", 0x04, 0x00, len(pdv)) + pdv


class StoreStream:
    """One association's P-DATA: C-STORE-RQs handled here, everything else handed on.

    ``contexts`` gives, once the association is established, each accepted presentation
    context ID whose abstract syntax we store to its transfer syntax (only those take
    the fast path); ``store`` stores one instance; ``send`` writes bytes to the peer.
    """

    def __init__(
        self,
        contexts: Callable[[], dict[int, str]],
        store: StoreFunction,
        send: Callable[[bytes], None],
    ):
        self._contexts_of = contexts
        self._contexts: dict[int, str] | None = None
        self._store = store
        self._send = send
        self._route: str | None = None  # None between messages, else "fast" or "pass"
        self._command = bytearray()  # command fragments of a message handed on (to find its end)
        self._command_done = False
        self._request: StoreRequest | None = None
        self._data_set = bytearray()

    def feed(self, body: memoryview) -> bytes:
        """Take one P-DATA-TF PDU body; return the PDU to hand to pynetdicom (empty if none).

        Raises :class:`ProtocolError` when the framing is broken.
        """
        items = split_pdvs(body)
        for index, (context_id, control, fragment) in enumerate(items):
            if self._route is None:
                self._route = self._start(context_id, control, fragment)
                if self._route == "fast":
                    continue  # the command PDV is read; the data set follows
                self._end_passed()
                self._route = "pass"
            if self._route == "pass":
                self._track_passed(items[index:])
                return _reframe(items[index:])
            self._add_fragment(context_id, control, fragment)
        return b""

    def _start(self, context_id: int, control: int, fragment: memoryview) -> str:
        """Route a new message by its first PDV: ours only if a whole C-STORE-RQ command is in it."""
        if control & (_COMMAND | _LAST) != _COMMAND | _LAST:
            return "pass"  # a command split across PDVs, or a data set where a command belongs
        if self._contexts is None:
            self._contexts = self._contexts_of()  # negotiated before the first P-DATA
        transfer_syntax = self._contexts.get(context_id)
        if transfer_syntax is None:
            return "pass"
        try:
            elements = decode_command(bytes(fragment))
        except ProtocolError:
            return "pass"  # pynetdicom reports the malformed command its own way
        message_id = _us(elements, 0x00000110)
        sop_class = _ui(elements, 0x00000002)
        sop_instance = _ui(elements, 0x00001000)
        if (
            _us(elements, 0x00000100) != C_STORE_RQ
            or _us(elements, 0x00000800) in (None, NO_DATA_SET)
            or message_id is None
            or not sop_class
            or not sop_instance
        ):
            return "pass"
        self._request = StoreRequest(context_id, message_id, sop_class, sop_instance, transfer_syntax)
        self._data_set = bytearray()
        return "fast"

    def _add_fragment(self, context_id: int, control: int, fragment: memoryview) -> None:
        request = self._request
        assert request is not None
        if control & _COMMAND or context_id != request.context_id:
            raise ProtocolError(
                f"PDV for context {context_id} (control 0x{control:02X}) inside the data set "
                f"of message {request.message_id} on context {request.context_id}"
            )
        self._data_set += fragment
        if control & _LAST:
            data_set, self._data_set = self._data_set, bytearray()
            self._request = None
            self._route = None
            status, comment = self._store(request, data_set)
            self._send(store_response_pdu(request, status, comment))

    def _track_passed(self, items: list[tuple[int, int, memoryview]]) -> None:
        """Follow a handed-on message to its last PDV, so the next one is routed afresh."""
        for _, control, fragment in items:
            if self._route is None:  # a new message starts inside a PDU being handed on
                self._end_passed()
                self._route = "pass"
            if control & _COMMAND:
                self._command += fragment
                if control & _LAST:
                    self._command_done = True
                    try:
                        data_set_type = _us(decode_command(bytes(self._command)), 0x00000800)
                    except ProtocolError:
                        data_set_type = None
                    if data_set_type in (None, NO_DATA_SET):
                        self._end_passed()
            elif control & _LAST and self._command_done:
                self._end_passed()

    def _end_passed(self) -> None:
        self._route = None
        self._command.clear()
        self._command_done = False


def _reframe(items: list[tuple[int, int, memoryview]]) -> bytes:
    """PDV items as the whole P-DATA-TF PDU pynetdicom decodes."""
    body = b"".join(_PDV_HEADER.pack(len(f) + 2, c, h) + bytes(f) for c, h, f in items)
    return struct.pack(">BBI", 0x04, 0x00, len(body)) + body
