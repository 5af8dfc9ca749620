"""Which model a job ran with, read cheaply from the weights folder.

Settle needs the model's identity for a job's unique key without loading the
model (torch) in the receiver process, so it reads config.json and hashes the
weight files. The hash is what an admin compares across nodes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from node.errors import ConfigError

BUNDLED_DEMO = Path(__file__).resolve().parent.parent / "models" / "weights" / "demo"


@dataclass(frozen=True)
class ModelIdentity:
    path: Path
    name: str
    version: str
    weights_sha256: str


def model_path(configured: Path | None) -> Path:
    return configured if configured is not None else BUNDLED_DEMO


@cache
def model_identity(path: Path) -> ModelIdentity:
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"model.path: {path} has no config.json (not a Hugging Face model folder)") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model.path: {config_file} is not valid JSON: {exc}") from exc
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ConfigError(f"model.path: {path} has no *.safetensors weights")
    digest = hashlib.sha256()
    for file in weights:
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return ModelIdentity(
        path=path,
        name=str(config.get("model_name") or path.name),
        version=str(config.get("model_version") or "0"),
        weights_sha256=digest.hexdigest(),
    )
