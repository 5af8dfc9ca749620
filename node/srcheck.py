"""Validate a written SR with the two outside checkers before it leaves the node.

dicom3tools' ``dciodvfy`` checks the IOD: modules, types, VRs, enumerated values. dcmtk's
``dsrdump`` parses the content tree and enforces the SR IOD's relationship constraints
(e.g. Basic Text SR forbids CODE HAS PROPERTIES), which dciodvfy does not check. Both are
called by absolute path: pynetdicom installs console scripts that shadow some dcmtk names
on PATH.

Errors fail validation; warnings are returned so the caller can record them. The known
warning of our own SRs is dciodvfy (2022) not listing Device UID (0018,1002) in Contributing
Equipment items, which IHE AI Results requires ("Standard Extended SOP Class").
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from node.errors import NodeError

DCIODVFY = Path("/usr/bin/dciodvfy")
DSRDUMP = Path("/usr/bin/dsrdump")
TIMEOUT_SECONDS = 60.0


class SrValidationError(NodeError):
    """The SR failed validation; ``errors`` holds the validators' error lines."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        self.errors = list(errors or [])
        detail = "".join(f"\n  {line}" for line in self.errors)
        super().__init__(message + detail)


class SrValidatorMissingError(SrValidationError):
    """A validator is not installed: a deployment problem, not a bad SR."""


def _run(tool: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    if not tool.is_file():
        package = "dicom3tools" if tool.name == "dciodvfy" else "dcmtk"
        raise SrValidatorMissingError(
            f"SR validator {tool} is missing: install the Debian package "
            f"{package} (apt-get install {package})"
        )
    try:
        return subprocess.run(
            [str(tool), *args], capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SrValidationError(f"{tool.name} did not finish within {timeout:.0f} s") from exc
    except OSError as exc:
        raise SrValidatorMissingError(f"SR validator {tool} could not be run: {exc}") from exc


def _lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.strip() for line in (proc.stderr + "\n" + proc.stdout).splitlines() if line.strip()]


def validate_sr(
    path: Path, *, dciodvfy: Path = DCIODVFY, dsrdump: Path = DSRDUMP, timeout: float = TIMEOUT_SECONDS
) -> list[str]:
    """Run dciodvfy and dsrdump on a Part 10 SR file; return their warnings.

    Raises :class:`SrValidationError` listing every error line when dciodvfy reports an
    ``Error -`` (or exits non-zero) or dsrdump cannot parse the document or reports an
    error (``E:``/``F:``), and :class:`SrValidatorMissingError` when a tool is missing.
    Warnings are ``dciodvfy: Warning - ...`` and ``dsrdump: W: ...`` lines.
    """
    path = Path(path)
    if not path.is_file():
        raise SrValidationError(f"SR file {path} does not exist")
    errors: list[str] = []
    warnings: list[str] = []

    iod = _run(dciodvfy, [str(path)], timeout)
    iod_lines = _lines(iod)
    errors += [f"dciodvfy: {line}" for line in iod_lines if line.startswith("Error")]
    warnings += [f"dciodvfy: {line}" for line in iod_lines if line.startswith("Warning")]
    if iod.returncode != 0 and not errors:
        errors += [f"dciodvfy: exit status {iod.returncode}"] + [f"dciodvfy: {line}" for line in iod_lines]

    tree = _run(dsrdump, ["-ll", "warn", "-Ph", str(path)], timeout)
    tree_lines = tree.stderr.splitlines()
    errors += [f"dsrdump: {line.strip()}" for line in tree_lines if line.startswith(("E:", "F:"))]
    warnings += [f"dsrdump: {line.strip()}" for line in tree_lines if line.startswith("W:")]
    if tree.returncode != 0 and not any(e.startswith("dsrdump") for e in errors):
        errors += [f"dsrdump: exit status {tree.returncode}"] + [f"dsrdump: {line}" for line in _lines(tree)]

    if errors:
        raise SrValidationError(f"SR {path.name} failed validation", errors)
    return warnings
