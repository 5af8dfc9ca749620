"""The coded meaning of the model's finding labels, for the SR.

A model folder may carry ``findings.json`` (a list of {key, display,
code_value, coding_scheme, code_meaning}) so AI teams bringing their own
finding vocabulary also bring its codes; without it, the phantom vocabulary
the demo model was trained on is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from node.errors import ConfigError


@dataclass(frozen=True)
class FindingCode:
    key: str
    display: str
    code_value: str
    coding_scheme: str
    code_meaning: str


def finding_codes(model_dir: Path) -> dict[str, FindingCode]:
    path = model_dir / "findings.json"
    if path.exists():
        try:
            return {item["key"]: FindingCode(**item) for item in json.loads(path.read_text())}
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"model.path: {path} is not a valid finding vocabulary: {exc}") from exc
    from models.phantom import FINDINGS

    return {
        f.key: FindingCode(
            key=f.key,
            display=f.display,
            code_value=f.code.value,
            coding_scheme=f.code.scheme,
            code_meaning=f.code.meaning,
        )
        for f in FINDINGS
    }
