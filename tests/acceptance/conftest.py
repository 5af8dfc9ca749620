"""Fixtures shared by the acceptance tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.models import save_tiny_model
from tests.support.pipeline import StoreScp


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreScp]:
    scp = StoreScp(tmp_path / "pacs").start()
    yield scp
    scp.stop()
