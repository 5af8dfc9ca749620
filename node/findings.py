"""The coded meaning of the model's finding labels and of their sites, for the SR.

A model folder may carry ``findings.json`` (a list of {key, display, code_value,
coding_scheme, code_meaning, sites}) so AI teams bringing their own finding
vocabulary also bring its codes; without it, the phantom vocabulary the demo
model was trained on is used. ``sites`` (optional) lists, per site name the
model's ``finding_sites`` uses, its anatomic structure and an optional modifier,
each code as [code value, coding scheme, code meaning]::

    {"name": "right upper lobe", "structure": ["45653009", "SCT", "Upper lobe of lung"],
     "modifier": [["272741003", "SCT", "Laterality"], ["24028007", "SCT", "Right"]]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import ConfigError
from node.sr import CodeTriple, FindingSite

_FIELDS = ("key", "display", "code_value", "coding_scheme", "code_meaning")


@dataclass(frozen=True)
class FindingCode:
    key: str
    display: str
    code_value: str
    coding_scheme: str
    code_meaning: str
    #: site name -> its coded Finding Site (probability left to the caller)
    sites: dict[str, FindingSite] = field(default_factory=dict)


def finding_codes(model_dir: Path) -> dict[str, FindingCode]:
    path = model_dir / "findings.json"
    if path.exists():
        try:
            entries = json.loads(path.read_text())
            return {item["key"]: _finding_code(item) for item in entries}
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"model.path: {path} is not a valid finding vocabulary: {exc}") from exc
    from models.phantom.findings import vocabulary_entries

    return {item["key"]: _finding_code(item) for item in vocabulary_entries()}


def _triple(value: Any) -> CodeTriple:
    if not isinstance(value, list | tuple) or len(value) != 3 or not all(isinstance(v, str) for v in value):
        raise ValueError(f"a code must be [code value, coding scheme, code meaning], got {value!r}")
    return (value[0], value[1], value[2])


def _finding_code(item: dict[str, Any]) -> FindingCode:
    sites = {}
    for site in item.get("sites", []):
        modifier = site.get("modifier")
        if modifier is not None and (not isinstance(modifier, list | tuple) or len(modifier) != 2):
            raise ValueError(f"site {site.get('name')!r}: modifier must be [concept name, value]")
        sites[site["name"]] = FindingSite(
            name=site["name"],
            structure=_triple(site["structure"]),
            modifier=None if modifier is None else (_triple(modifier[0]), _triple(modifier[1])),
        )
    unknown = sorted(set(item) - {*_FIELDS, "sites"})
    if unknown:
        raise ValueError(f"finding {item.get('key')!r} has unknown keys {unknown}")
    return FindingCode(**{k: item[k] for k in _FIELDS}, sites=sites)
