"""The msvlm-node command as an admin or AI team uses it (subprocesses, real files)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.acceptance

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=300,
    )


def test_phantom_command_writes_a_study_with_its_answer_key(tmp_path: Path) -> None:
    assert "usage" in _run("phantom", "--help", cwd=tmp_path).stdout.lower()
    result = _run(
        "phantom",
        str(tmp_path / "ct"),
        "--modality",
        "CT",
        "--findings",
        "lung_nodule",
        "--seed",
        "4",
        "--matrix",
        "32",
        "--slices",
        "10",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    truth = json.loads((tmp_path / "ct" / "truth.json").read_text())
    assert truth["labels"]["lung_nodule"] == 1
    assert list((tmp_path / "ct").rglob("*.dcm"))


def test_db_upgrade_then_listings_on_an_empty_ledger(tmp_path: Path) -> None:
    env = {"MSVLM_NODE_DATABASE__URL": f"sqlite:///{tmp_path / 'l.db'}"}
    refused = _run("jobs", "list", cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "msvlm-node db upgrade" in refused.stderr
    assert _run("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    assert _run("db", "check", cwd=tmp_path, env=env).returncode == 0
    assert json.loads(_run("jobs", "list", "--json", cwd=tmp_path, env=env).stdout) == []
    assert json.loads(_run("studies", "list", "--json", cwd=tmp_path, env=env).stdout) == []
    missing = _run("jobs", "show", "7", cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "no job 7" in missing.stderr
    bad = _run("jobs", "list", "--since", "yesterday-ish", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_bad_configuration_stops_with_the_key_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[node]\nport = 99999\n")
    result = _run("--config", str(config), "serve", cwd=tmp_path)
    assert result.returncode == 2
    assert "node.port" in result.stderr


def test_demo_command_runs_the_loop_and_shows_where_the_findings_were_planted(tmp_path: Path) -> None:
    """The README's first command: phantom study -> node -> SR at a PACS, printed.

    The planted sites are printed so that a reader can hold the narrative against them.
    """
    result = _run("demo", "--workdir", str(tmp_path / "demo"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "planted: lung_nodule (lobe: right upper lobe), pleural_effusion (side: left)" in out
    assert "SR received by DEMOPACS" in out
    assert "Pulmonary nodule: Present" in out and "Pleural effusion: Present" in out
    assert "Finding Site: Pleura" in out and "Laterality:" in out  # the effusion's coded site
    assert "Lung nodule PRESENT" in out and "side read from the images]" in out  # the nodule's side
    # the impression gives the nodule the size the findings give it (version 6 wrote 12 mm in
    # the findings and 16 mm in the impression of this study: `narrative.restate_measurements`)
    finding_size = re.search(r"Finding: [^\n]*?(\d+) mm solid nodule", out)
    impression_size = re.search(r"Impression: [^\n]*?(\d+) mm pulmonary nodule", out)
    assert finding_size and impression_size, out[-3000:]
    assert finding_size.group(1) == impression_size.group(1), (
        finding_size.group(0),
        impression_size.group(0),
    )
    # the SR points to the image that shows each placed finding best, listed as a viewer lists it
    assert out.count("Best illustration of finding: image ") == 2, out[-3000:]
    # with where on it the model read the finding (its token's square, in the image's pixels)
    region = r", columns [\d.]+-[\d.]+, rows [\d.]+-[\d.]+"
    key_image = rf"Lung nodule PRESENT p=[\d.]+ \[site: [^]]*\] \[key image: series \d+, image \d+{region}\]"
    assert re.search(key_image, out), out[-1500:]
    assert list((tmp_path / "demo" / "storage").rglob("*.dcm"))  # the study the node stored
