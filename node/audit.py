"""Who is asking, and a record of it: bearer-token identity and the ``audit`` table.

The admin API serves patient data and can change job state, so every such
request leaves an :class:`~node.schema.AuditEntry`. The entry is written in the
same session as the request's own work: for a state change it commits in the
same transaction (a retried job never appears without the request that retried
it); if the work fails, the work is rolled back and the failure is recorded
with its HTTP status instead.

Tokens are never stored or logged: an actor is named by a short hash of its
token (``token:1a2b3c4d``), and tokens are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import HTTPException, Request
from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node.admin import NotFound
from node.errors import NodeError
from node.schema import AuditEntry, utcnow

log = logging.getLogger(__name__)

LOOPBACK_ACTOR = "loopback"
#: the dashboard's login sets this cookie; only GET pages outside /api accept it (no CSRF surface)
TOKEN_COOKIE = "msvlm_token"
#: names a browser-friendly host can have when it really is this machine
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def token_id(token: str) -> str:
    """A stable, non-reversible name for a token, fit for the audit table and logs."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; anything unparsable is not loopback."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@dataclass(frozen=True)
class Authenticator:
    """Checks bearer tokens against the configured ones without leaking timing."""

    tokens: tuple[SecretStr, ...]

    def actor_for_token(self, presented: str | None) -> str | None:
        """The actor name for a valid token, else ``None``. Every token is compared (no early exit)."""
        if not presented:
            return None
        given = presented.encode()
        match: str | None = None
        for token in self.tokens:
            secret = token.get_secret_value()
            if hmac.compare_digest(given, secret.encode()) and match is None:
                match = token_id(secret)
        return match

    @staticmethod
    def bearer(headers: Mapping[str, str]) -> str | None:
        """The token of an ``Authorization: Bearer <token>`` header, if any."""
        value = headers.get("authorization", "")
        scheme, _, credentials = value.partition(" ")
        return credentials.strip() or None if scheme.lower() == "bearer" else None


def http_status(exc: BaseException) -> int:
    """The HTTP status an exception from a handler becomes (the app's handlers use the same map)."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, NodeError):
        return 409
    return 500


@dataclass(frozen=True)
class Requester:
    """Who made a request and what it asked, as the audit table records it."""

    actor: str
    client: str | None
    method: str
    path: str

    def entry(self, status: int) -> AuditEntry:
        return AuditEntry(
            at=utcnow(),
            actor=self.actor[:64],
            client=(self.client or "")[:64] or None,
            method=self.method[:8],
            path=self.path[:512],
            status=status,
        )


def requester(request: Request) -> Requester:
    """The audit identity of a request (``actor`` and ``client`` were set by node.api's middleware)."""
    query = request.url.query
    return Requester(
        actor=request.state.actor,
        client=request.state.client,
        method=request.method,
        path=request.url.path + (f"?{query}" if query else ""),
    )


@contextmanager
def audited(factory: sessionmaker[Session], requester: Requester) -> Iterator[Session]:
    """A transaction whose work commits together with its audit entry (status 200).

    On an exception the work is rolled back, an entry with the exception's HTTP
    status is committed on its own, and the exception propagates.
    """
    with factory() as session:
        session.begin()
        try:
            yield session
        except BaseException as exc:
            session.rollback()
            _record_failure(session, requester, http_status(exc))
            raise
        session.add(requester.entry(200))
        session.commit()
        log.debug(
            "audit.recorded",
            extra={
                "actor": requester.actor,
                "method": requester.method,
                "path": requester.path,
                "status": 200,
            },
        )


def _record_failure(session: Session, requester: Requester, status: int) -> None:
    try:
        with session.begin():
            session.add(requester.entry(status))
    except SQLAlchemyError:
        log.exception(
            "audit.not_recorded",
            extra={"actor": requester.actor, "method": requester.method, "status": status},
        )
