"""The association gate: each refusal has its code (the ledger's and the metrics' label) and the
A-ASSOCIATE-RJ that PS3.8 gives for it."""

from __future__ import annotations

import pytest

from node.config import Settings
from node.receive import _REJECT_PDU, RejectionCode, check_caller

SETTINGS = Settings.model_validate(
    {
        "node": {"ae_title": "MSVLM", "max_associations": 2},
        "security": {"peers": [{"ae_title": "CT1", "host": "10.0.0.5"}, {"ae_title": "ANY"}]},
    }
)


@pytest.mark.parametrize(
    ("calling", "called", "host", "active", "code", "says"),
    [
        ("CT1", "PACS", "10.0.0.5", 1, RejectionCode.CALLED_AE, "called AE title 'PACS' is not ours"),
        ("INTRUDER", "MSVLM", "10.0.0.5", 1, RejectionCode.CALLING_AE, "not in the allow-list"),
        ("CT1", "MSVLM", "10.0.0.6", 1, RejectionCode.CALLING_HOST, "not allowed from 10.0.0.6"),
        ("ANY", "MSVLM", "10.9.9.9", 3, RejectionCode.BUSY, "2 associations already active (limit 2)"),
    ],
)
def test_each_refusal_is_coded_and_explained(
    calling: str, called: str, host: str, active: int, code: RejectionCode, says: str
) -> None:
    refusal = check_caller(SETTINGS, calling_ae=calling, called_ae=called, host=host, active=active)
    assert refusal is not None
    assert refusal[0] is code and says in refusal[1]


def test_allowed_callers_pass_and_every_code_has_its_reject_pdu() -> None:
    assert check_caller(SETTINGS, calling_ae="CT1", called_ae="MSVLM", host="10.0.0.5", active=2) is None
    assert check_caller(SETTINGS, calling_ae="ANY", called_ae="MSVLM", host="10.9.9.9", active=1) is None
    assert set(_REJECT_PDU) == set(RejectionCode)
    # permanent, service-user, called AE not recognised / transient, service-provider, local limit
    assert _REJECT_PDU[RejectionCode.CALLED_AE] == (0x01, 0x01, 0x07)
    assert _REJECT_PDU[RejectionCode.BUSY] == (0x02, 0x03, 0x02)
