"""dcmtk and dicom3tools as real peers.

pynetdicom 3 installs console scripts named ``storescu``/``echoscu`` that
shadow dcmtk's on PATH, so the tools are looked up in /usr/bin and checked to
be dcmtk. dcmtk 3.6.7 leaves Nagle's algorithm on unless TCP_NODELAY=1 is in
its environment (every association then crawls at ~22 images/s): we set it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path


@cache
def tool(name: str) -> str:
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and Path(candidate).exists():
            probe = subprocess.run([candidate, "--version"], capture_output=True, text=True)
            if "dcmtk" in (probe.stdout + probe.stderr).lower() or name == "dciodvfy":
                return candidate
    raise RuntimeError(f"dcmtk's {name} not found: apt-get install dcmtk dicom3tools")


def env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def run(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool(name), *args], capture_output=True, text=True, env=env(), timeout=timeout)
