"""Shared fixtures: databases (SQLite and a real PostgreSQL) and the real node."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.node import NodeProcess
from tests.support.postgres import ThrowawayPostgres, create_database


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A PostgreSQL server for the whole session: ``MSVLM_TEST_POSTGRES_URL`` or a throw-away one."""
    given = os.environ.get("MSVLM_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    server = ThrowawayPostgres()
    try:
        yield server.admin_url
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each supported kind: every test using it runs on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return create_database(request.getfixturevalue("postgres_admin_url"))


@pytest.fixture
def node_factory(tmp_path: Path, database_url: str) -> Iterator[type[NodeProcess]]:
    """Start real ``msvlm-node serve`` processes; every one is stopped at the end."""
    started: list[NodeProcess] = []

    class _Factory(NodeProcess):
        def __init__(self, **kwargs: object) -> None:
            workdir = tmp_path / f"node{len(started)}"
            workdir.mkdir()
            super().__init__(workdir, database_url, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield _Factory
    for node in started:
        if node.proc is not None:
            node.stop()


@pytest.fixture
def node(node_factory: type[NodeProcess]) -> NodeProcess:
    return node_factory().start()
