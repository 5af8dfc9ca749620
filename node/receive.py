"""The DICOM SCP: C-ECHO and C-STORE, with the caller allow-list and TLS.

The C-STORE handler is thin and total, in the style of pynetdicom's own
``apps``: check, write atomically, record, and return a named
:class:`~node.statuses.Status` — whatever happens, it answers, and it answers
Success only once the file is durable and its index row committed. The handler's
dependencies travel in its argument tuple (:class:`ReceiveContext`), never in
globals, so several receivers can live in one test process.

C-STOREs reach that handler (:func:`answer_store`) by two paths: normally the
fast path of :mod:`node.pdata`, in the thread that reads the association's
socket, and for what it hands on (a command split across PDUs, say) pynetdicom's
own ``EVT_C_STORE`` handler. Both give the same statuses, rows and logs.
"""

from __future__ import annotations

import functools
import logging
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association as PynAssociation
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from node.balance import AcceptBalance
from node.config import Settings
from node.errors import ConfigError, DatabaseError, DiskFullError, StorageError
from node.filemeta import file_meta
from node.index import Indexer, RejectedInstance, inspect_encoded
from node.pdata import StoreRequest, StoreStream
from node.sop_classes import ACCEPTED_SOP_CLASSES, ACCEPTED_TRANSFER_SYNTAXES
from node.statuses import Status
from node.store import InstanceStore
from node.transport import EventDrivenRequestHandler, StoreStreamFactory

log = logging.getLogger(__name__)


class RejectionCode(StrEnum):
    """Why an association was refused: ``associations.rejection_code`` and the metrics' label."""

    CALLED_AE = "called_ae"  # the peer asked for another AE title than ours
    CALLING_AE = "calling_ae"  # the calling AE title is not in the allow-list
    CALLING_HOST = "calling_host"  # a known AE title from a host it is not allowed from
    BUSY = "busy"  # the limit on concurrent associations was reached


#: A-ASSOCIATE-RJ (result, source, diagnostic) sent for each code, PS3.8 9.3.4
_REJECT_PDU = {
    RejectionCode.CALLED_AE: (0x01, 0x01, 0x07),
    RejectionCode.CALLING_AE: (0x01, 0x01, 0x03),
    RejectionCode.CALLING_HOST: (0x01, 0x01, 0x03),
    RejectionCode.BUSY: (0x02, 0x03, 0x02),
}
#: below this maximum PDU length of the requestor, responses are left to pynetdicom
_SMALLEST_PEER_PDU = 1024


@dataclass
class _AssocState:
    row_id: int | None  # None when the association's row could not be written
    received: int = 0
    failed: int = 0
    nbytes: int = 0


@dataclass
class ReceiveContext:
    """Everything the handlers need, bound through pynetdicom's handler args."""

    settings: Settings
    store: InstanceStore
    indexer: Indexer
    tls: bool
    associations: dict[PynAssociation, _AssocState] = field(default_factory=dict)
    #: guards the states; notified when one is registered (:func:`handle_accepted`)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def state(self, assoc: PynAssociation) -> _AssocState | None:
        with self.lock:
            return self.associations.get(assoc)

    def wait_for_state(self, assoc: PynAssociation, timeout: float) -> _AssocState | None:
        """The association's state, once :func:`handle_accepted` has recorded it.

        The fast path reads the first P-DATA in the DUL thread, possibly before the
        association thread has run the accept handler (which inserts the row).
        """
        with self.lock:
            self.lock.wait_for(lambda: assoc in self.associations, timeout)
            return self.associations.get(assoc)


def check_caller(
    settings: Settings, *, calling_ae: str, called_ae: str, host: str, active: int
) -> tuple[RejectionCode, str] | None:
    """Why an association must be refused (a code and a sentence), or ``None`` to accept it."""
    if called_ae != settings.node.ae_title:
        return (
            RejectionCode.CALLED_AE,
            f"called AE title {called_ae!r} is not ours ({settings.node.ae_title!r})",
        )
    peers = [p for p in settings.security.peers if p.ae_title == calling_ae]
    if not peers and not settings.security.accept_unknown_callers:
        return RejectionCode.CALLING_AE, f"calling AE title {calling_ae!r} is not in the allow-list"
    if peers and not any(p.host is None or p.host == host for p in peers):
        return RejectionCode.CALLING_HOST, f"calling AE title {calling_ae!r} is not allowed from {host}"
    if active > settings.node.max_associations:
        return (
            RejectionCode.BUSY,
            f"{active - 1} associations already active (limit {settings.node.max_associations})",
        )
    return None


def handle_requested(event: Event, ctx: ReceiveContext) -> None:
    """Apply the allow-list before negotiation; record and log every rejection."""
    assoc = event.assoc
    request = assoc.requestor.primitive
    assert request is not None  # EVT_REQUESTED fires once the A-ASSOCIATE-RQ is in
    calling = request.calling_ae_title.strip()
    called = request.called_ae_title.strip()
    host, port = assoc.requestor.address, assoc.requestor.port
    active = sum(1 for a in assoc.ae.active_associations if a.is_acceptor)
    refusal = check_caller(ctx.settings, calling_ae=calling, called_ae=called, host=host, active=active)
    if refusal is None:
        return
    code, reason = refusal
    log.warning(
        "receive.association_rejected",
        extra={"calling_ae": calling, "peer": f"{host}:{port}", "code": code.value, "reason": reason},
    )
    try:
        ctx.indexer.open_association(
            calling_ae=calling,
            called_ae=called,
            host=host,
            port=port,
            tls=ctx.tls,
            outcome="rejected",
            rejection_code=code,
            rejection_reason=reason,
        )
    except SQLAlchemyError:
        log.exception("receive.rejection_not_recorded", extra={"calling_ae": calling})
    assoc.acse.send_reject(*_REJECT_PDU[code])
    assoc.kill()  # as pynetdicom does after its own rejections: stop the DUL reader


def handle_accepted(event: Event, ctx: ReceiveContext) -> None:
    """Record the association; its state is registered even when the row cannot be written.

    The fast path waits for that state before its first store, so it must always come.
    """
    assoc = event.assoc
    calling = assoc.requestor.ae_title.strip()
    row_id: int | None = None
    try:
        row_id = ctx.indexer.open_association(
            calling_ae=calling,
            called_ae=ctx.settings.node.ae_title,
            host=assoc.requestor.address,
            port=assoc.requestor.port,
            tls=ctx.tls,
        )
    except (SQLAlchemyError, DatabaseError) as exc:
        log.error(
            "receive.association_not_recorded", extra={"calling_ae": calling, "error": type(exc).__name__}
        )
    with ctx.lock:
        ctx.associations[assoc] = _AssocState(row_id=row_id)
        ctx.lock.notify_all()
    log.info(
        "receive.association_accepted",
        extra={
            "association": row_id,
            "calling_ae": calling,
            "peer": f"{assoc.requestor.address}:{assoc.requestor.port}",
        },
    )


def handle_ended(event: Event, ctx: ReceiveContext) -> None:
    """Close the association's row on release or abort (the settle step reads it)."""
    outcome = "released" if event.event == evt.EVT_RELEASED else "aborted"
    with ctx.lock:
        state = ctx.associations.pop(event.assoc, None)
    if state is None:
        return
    if state.row_id is not None:
        ctx.indexer.close_association(
            state.row_id, outcome=outcome, received=state.received, failed=state.failed, nbytes=state.nbytes
        )
    log.info(
        "receive.association_" + outcome,
        extra={
            "association": state.row_id,
            "instances": state.received,
            "failed": state.failed,
            "bytes": state.nbytes,
        },
    )


def handle_echo(event: Event) -> int:
    return int(Status.SUCCESS)


def handle_store(event: Event, ctx: ReceiveContext) -> Dataset:
    """pynetdicom's C-STORE handler, for the requests the fast path hands on (:mod:`node.pdata`)."""
    request = cast(C_STORE, event.request)
    response = Dataset()
    if not isinstance(request.DataSet, BytesIO):
        status, comment = Status.CANNOT_UNDERSTAND, "C-STORE request without a data set"
    else:
        store_request = StoreRequest(
            context_id=event.context.context_id,
            message_id=int(request.MessageID or 0),
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            transfer_syntax_uid=str(event.context.transfer_syntax),
        )
        status, comment = answer_store(ctx, event.assoc, store_request, request.DataSet.getvalue())
    response.Status = int(status)
    if comment:
        response.ErrorComment = comment[:64]
    return response


def answer_store(
    ctx: ReceiveContext, assoc: PynAssociation, request: StoreRequest, data_set: bytes | bytearray
) -> tuple[Status, str]:
    """Store one instance durably and index it; always answer with a named status.

    Both C-STORE paths end here: the fast path in the reading thread and pynetdicom's
    handler. Counts the outcome on the association and logs a failure.
    """
    state = ctx.state(assoc)
    try:
        status, comment = _store(ctx, state, request, data_set)
    except Exception:  # a bug must cost a retry from the sender, not the association
        log.exception("receive.store_crashed", extra={"sop_instance_uid": request.sop_instance_uid[:64]})
        status, comment = Status.PROCESSING_FAILURE, "internal error while storing; retry later"
    if state is not None:
        with ctx.lock:
            if status == Status.SUCCESS:
                state.received += 1
            else:
                state.failed += 1
    if status != Status.SUCCESS:
        log.warning(
            "receive.store_failed",
            extra={
                "sop_instance_uid": request.sop_instance_uid[:64],
                "status": f"0x{status:04X}",
                "status_name": status.name,
                "reason": comment,
            },
        )
    return status, comment


def _store(
    ctx: ReceiveContext, state: _AssocState | None, request: StoreRequest, data_set: bytes | bytearray
) -> tuple[Status, str]:
    try:
        meta = file_meta(request.sop_class_uid, request.sop_instance_uid, request.transfer_syntax_uid)
        data = meta + data_set
        info = inspect_encoded(
            data,
            requested_sop_class=request.sop_class_uid,
            requested_sop_instance=request.sop_instance_uid,
            transfer_syntax=request.transfer_syntax_uid,
        )
        ctx.store.check_space(len(data))
        relative = ctx.store.relative_path(
            info.study_instance_uid, info.series_instance_uid, info.sop_instance_uid
        )
        size = ctx.store.write(relative, (data,))
        ctx.indexer.record_instance(
            info, path=relative, size=size, association_id=state.row_id if state is not None else None
        )
    except RejectedInstance as exc:
        return exc.status, str(exc)
    except DiskFullError as exc:
        return Status.OUT_OF_RESOURCES_DISK, str(exc)
    except StorageError as exc:
        return Status.OUT_OF_RESOURCES_STORAGE, str(exc)
    except (SQLAlchemyError, DatabaseError) as exc:
        log.error("receive.index_failed", extra={"error": type(exc).__name__})
        return Status.OUT_OF_RESOURCES_DATABASE, "database unavailable; retry later"
    if state is not None:
        with ctx.lock:
            state.nbytes += size
    log.debug("receive.stored", extra={"sop_instance_uid": info.sop_instance_uid, "bytes": size})
    return Status.SUCCESS, ""


def store_stream(ctx: ReceiveContext, assoc: PynAssociation) -> StoreStream:
    """The association's C-STORE fast path (:mod:`node.pdata`), storing through :func:`answer_store`."""

    def contexts() -> dict[int, str]:
        if ctx.wait_for_state(assoc, ctx.settings.node.acse_timeout_seconds) is None:
            log.error("receive.association_state_missing", extra={"peer": assoc.requestor.address})
        peer_limit = assoc.requestor.maximum_length or 0
        if 0 < peer_limit < _SMALLEST_PEER_PDU:
            return {}  # a response might need fragmenting: pynetdicom does that
        return {
            int(context.context_id): str(context.transfer_syntax[0])
            for context in assoc.accepted_contexts
            if context.abstract_syntax in ACCEPTED_SOP_CLASSES and context.context_id is not None
        }

    def store(request: StoreRequest, data_set: bytearray) -> tuple[int, str]:
        return answer_store(ctx, assoc, request, data_set)

    def send(data: bytes) -> None:
        assoc.dul.socket.send(data)  # type: ignore[union-attr]

    return StoreStream(contexts, store, send)


class ReceiverServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server, optionally on a listening socket it shares.

    With one receiver process it binds its own socket, as pynetdicom's does. With
    several (``node.receivers``), ``serve`` binds one socket (:func:`listen_socket`) and
    every process serves it: the listener is then non-blocking, because a sibling may
    take a connection between this process's ``select`` and its ``accept``, and an
    :class:`~node.balance.AcceptBalance` leaves each connection to the least loaded process.
    Each association gets a C-STORE fast path from ``store_stream_factory``
    (:class:`~node.transport.EventDrivenRequestHandler` asks for it).
    """

    store_stream_factory: StoreStreamFactory | None = None

    def __init__(
        self,
        *args: Any,
        listener: socket.socket | None = None,
        balance: AcceptBalance | None = None,
        **kwargs: Any,
    ) -> None:
        self._listener = listener
        self._balance = balance
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self._listener is None:
            super().server_bind()
            return
        assert self.socket is not None
        self.socket.close()  # the unbound socket socketserver made before calling us
        self.socket = self._listener
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self._listener is None:
            super().server_activate()

    def server_close(self) -> None:
        """Close our descriptor; a shared listener is not shut down under the siblings."""
        if self._listener is None:
            super().server_close()
        elif self.socket is not None:
            self.socket.close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept with Nagle off: each C-STORE response is a small write the sender waits for.

        A shared listener's connection is left to a less loaded sibling: the OSError
        makes socketserver skip this turn (and so does a sibling having taken it first).
        """
        if self._balance is not None:
            self._balance.publish(len(self.active_associations))
            if self._balance.should_yield():
                time.sleep(0.001)  # the connection stays readable until a sibling takes it
                raise BlockingIOError("left to a less loaded receiver process")
        client, address = super().get_request()  # blocking, even from a non-blocking listener
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._balance is not None:
            self._balance.accepted(len(self.active_associations) + 1)  # its thread starts later
        return client, address

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int] | str
    ) -> None:
        """Start the association's thread from the accept loop itself.

        pynetdicom's request handler only creates and starts the association's thread, so
        the extra thread per connection that ThreadingMixIn makes buys nothing; here the
        association is alive before the next accept, and the published count is exact.
        """
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def service_actions(self) -> None:
        """Each turn of the accept loop: also publish how many associations are still live."""
        super().service_actions()
        if self._balance is not None:
            self._balance.publish(len(self.active_associations))


def listen_socket(host: str, port: int, *, backlog: int = 128) -> socket.socket:
    """The listening socket ``serve`` binds once and hands to every receiver process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


def build_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    sec = settings.security
    if not sec.tls_enabled:
        return None
    if sec.tls_certificate is None or sec.tls_private_key is None:
        raise ConfigError("security.tls_certificate and security.tls_private_key are required with TLS")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(sec.tls_certificate, sec.tls_private_key)
        if sec.tls_ca_certificates is not None:
            context.load_verify_locations(cafile=str(sec.tls_ca_certificates))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"security.tls_*: cannot load certificate/key/CA: {exc}") from exc
    if sec.tls_require_client_certificate:
        if sec.tls_ca_certificates is None:
            raise ConfigError("security.tls_ca_certificates is required to verify client certificates")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def build_server(
    settings: Settings,
    ctx: ReceiveContext,
    ssl_context: ssl.SSLContext | None,
    *,
    listener: socket.socket | None = None,
    balance: AcceptBalance | None = None,
) -> ReceiverServer:
    """Bind the SCP, or take ``listener`` (not yet serving); call ``serve_forever`` on the result."""
    node = settings.node
    ae = AE(ae_title=node.ae_title)
    ae.maximum_associations = node.max_associations + 1  # our own check records the refusal
    ae.maximum_pdu_size = node.max_pdu_size
    ae.network_timeout = node.network_timeout_seconds
    ae.acse_timeout = node.acse_timeout_seconds
    ae.dimse_timeout = node.dimse_timeout_seconds
    ae.require_called_aet = False  # checked (and recorded) in handle_requested
    for uid in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(uid, list(ACCEPTED_TRANSFER_SYNTAXES))
    ae.add_supported_context("1.2.840.10008.1.1")  # Verification
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, handle_requested, [ctx]),
        (evt.EVT_ACCEPTED, handle_accepted, [ctx]),
        (evt.EVT_RELEASED, handle_ended, [ctx]),
        (evt.EVT_ABORTED, handle_ended, [ctx]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ctx]),
    ]
    server = ae.make_server(
        (node.host, node.port),
        ae_title=node.ae_title,
        ssl_context=ssl_context,
        evt_handlers=handlers,
        server_class=ReceiverServer,
        request_handler=EventDrivenRequestHandler,
        listener=listener,
        balance=balance,
    )
    receiver = cast(ReceiverServer, server)
    receiver.store_stream_factory = functools.partial(store_stream, ctx)
    return receiver


def drain(server: ThreadedAssociationServer, *, timeout: float) -> int:
    """Stop accepting, wait for in-flight associations, abort stragglers.

    Returns how many associations had to be aborted after ``timeout``.
    """
    # TCPServer.shutdown stops serve_forever (running in another thread); pynetdicom's
    # own shutdown() expects a server registered by start_server, which ours is not.
    socketserver.TCPServer.shutdown(server)
    server.server_close()
    deadline = threading.Event()
    waited = 0.0
    while server.active_associations and waited < timeout:
        deadline.wait(0.1)
        waited += 0.1
    stragglers = server.active_associations
    for assoc in stragglers:
        assoc.abort()
    return len(stragglers)
