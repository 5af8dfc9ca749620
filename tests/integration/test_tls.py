"""DICOM TLS: a client with a certificate from our CA gets in; one without does not."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from node.schema import Association, Instance
from tests.support import dcmtk
from tests.support.dicom import write_ct_series
from tests.support.node import NodeProcess
from tests.support.pipeline import ledger, wait_for
from tests.support.tls import make_pki

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("receivers", [1, 2], ids=["one-receiver", "two-receivers-one-socket"])
def test_tls_association_needs_a_client_certificate(
    node_factory: type[NodeProcess], tmp_path: Path, receivers: int
) -> None:
    pki = make_pki(tmp_path)
    node = node_factory(
        extra={
            "node": {"receivers": receivers},
            "security": {
                "tls_enabled": True,
                "tls_certificate": str(pki.server_cert),
                "tls_private_key": str(pki.server_key),
                "tls_ca_certificates": str(pki.ca),
            },
        }
    ).start()
    files = write_ct_series(tmp_path / "s", 3)
    with_cert = dcmtk.run(
        "storescu",
        "-v",
        "+tls",
        str(pki.client_key),
        str(pki.client_cert),
        "+cf",
        str(pki.ca),
        "-aet",
        "STORESCU",
        "-aec",
        "MSVLM",
        "127.0.0.1",
        str(node.port),
        *map(str, files),
    )
    assert with_cert.returncode == 0, with_cert.stdout + with_cert.stderr

    anonymous = dcmtk.run(
        "echoscu",
        "+tla",
        "+cf",
        str(pki.ca),
        "-aet",
        "STORESCU",
        "-aec",
        "MSVLM",
        "127.0.0.1",
        str(node.port),
    )
    assert anonymous.returncode != 0
    plain = dcmtk.run("echoscu", "-aet", "STORESCU", "-aec", "MSVLM", "127.0.0.1", str(node.port), timeout=60)
    assert plain.returncode != 0

    # the node records a release just after answering it
    released = wait_for(
        lambda: ledger(node.database_url, select(Association.tls).where(Association.outcome == "released")),
        10,
        "the TLS association to be recorded as released",
        node,
    )
    assert [r.tls for r in released] == [True]
    assert len(ledger(node.database_url, select(Instance.id))) == 3
    # the failed handshakes did not stop the node
    again = dcmtk.run(
        "echoscu",
        "+tls",
        str(pki.client_key),
        str(pki.client_cert),
        "+cf",
        str(pki.ca),
        "-aet",
        "STORESCU",
        "-aec",
        "MSVLM",
        "127.0.0.1",
        str(node.port),
    )
    assert again.returncode == 0, again.stderr
