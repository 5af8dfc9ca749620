"""node.findings: a model folder's findings.json, with its sites' codes, or the phantom default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.errors import ConfigError
from node.findings import finding_codes

NODULE = {
    "key": "lung_nodule",
    "display": "Lung nodule",
    "code_value": "786838002",
    "coding_scheme": "SCT",
    "code_meaning": "Pulmonary nodule",
}
RUL = {
    "name": "right upper lobe",
    "structure": ["45653009", "SCT", "Upper lobe of lung"],
    "modifier": [["272741003", "SCT", "Laterality"], ["24028007", "SCT", "Right"]],
}


def _folder(tmp_path: Path, entries: object) -> Path:
    (tmp_path / "findings.json").write_text(json.dumps(entries))
    return tmp_path


def test_sites_are_read_with_their_codes(tmp_path: Path) -> None:
    codes = finding_codes(
        _folder(tmp_path, [{**NODULE, "sites": [RUL, {"name": "hilum", "structure": ["1", "99X", "Hilum"]}]}])
    )
    site = codes["lung_nodule"].sites["right upper lobe"]
    assert site.structure == ("45653009", "SCT", "Upper lobe of lung")
    assert site.modifier == (("272741003", "SCT", "Laterality"), ("24028007", "SCT", "Right"))
    assert codes["lung_nodule"].sites["hilum"].modifier is None and site.schemes == {"SCT"}


def test_without_a_file_the_phantom_vocabulary_codes_every_site_the_demo_can_call() -> None:
    codes = finding_codes(Path("/nonexistent"))
    config = json.loads((Path(__file__).resolve().parents[2] / "models/weights/demo/config.json").read_text())
    for key, sites in config["finding_sites"].items():
        assert set(codes[key].sites) == set(sites), key
    assert codes["cardiomegaly"].sites == {}


@pytest.mark.parametrize(
    "entry",
    [
        {**NODULE, "sites": [{**RUL, "modifier": [["272741003", "SCT", "Laterality"]]}]},
        {**NODULE, "sites": [{**RUL, "structure": ["45653009", "SCT"]}]},
        {**NODULE, "sites": [{"name": "right upper lobe"}]},
        {**NODULE, "sites": [{**RUL, "structure": ["45653009", "SCT", ""]}]},
        {**NODULE, "colour": "red"},
    ],
    ids=["modifier-without-value", "short-code", "no-structure", "empty-meaning", "unknown-key"],
)
def test_a_bad_vocabulary_stops_start_up_naming_the_file(tmp_path: Path, entry: dict) -> None:
    with pytest.raises(ConfigError, match="findings.json is not a valid finding vocabulary"):
        finding_codes(_folder(tmp_path, [entry]))
