"""Engine, sessions and schema management for the SQL ledger.

SQLite (WAL, synchronous=FULL so an acknowledged instance survives a power cut)
is the embedded default; PostgreSQL (``postgresql+psycopg://``) is for
production and scale-out. The schema is owned by Alembic: ``serve`` creates a
brand-new embedded database itself, but refuses to run against an older schema
and tells the admin to run ``msvlm-node db upgrade``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node.errors import DatabaseError

log = logging.getLogger(__name__)


def _migrations_dir() -> Path:
    """The ``migrations`` package (shipped so installed copies can upgrade), else the checkout's."""
    spec = importlib.util.find_spec("migrations")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent
    return Path(__file__).resolve().parent.parent / "migrations"


MIGRATIONS_DIR = _migrations_dir()


def create_db_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine with the pragmas/pool settings this node relies on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision(engine: Engine) -> str:
    heads = ScriptDirectory.from_config(alembic_config(engine)).get_heads()
    if len(heads) != 1:
        raise DatabaseError(f"migrations have {len(heads)} heads; expected exactly one")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database unreachable at {engine.url!r}: {exc}") from exc


def upgrade(engine: Engine) -> str:
    """Bring the schema to the newest migration; returns the revision reached."""
    command.upgrade(alembic_config(engine), "head")
    revision = head_revision(engine)
    log.info("db.upgraded", extra={"revision": revision})
    return revision


def is_empty(engine: Engine) -> bool:
    with engine.connect() as conn:
        return not inspect(conn).get_table_names()


def ensure_schema(engine: Engine, *, create_if_empty: bool) -> None:
    """Check the schema is current; create it on an empty database if allowed.

    An existing database with an older (or unknown) revision is never changed
    here: upgrading a production ledger is an admin's explicit decision.
    """
    current = current_revision(engine)
    head = head_revision(engine)
    if current == head:
        return
    if current is None and is_empty(engine) and create_if_empty:
        log.info("db.creating", extra={"url": engine.url.render_as_string(hide_password=True)})
        upgrade(engine)
        return
    raise DatabaseError(
        f"database schema is at revision {current or 'none'} but this version needs {head}; "
        "run `msvlm-node db upgrade` first"
    )
