"""The shipped unit file passes `systemd-analyze verify` without a warning."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

UNIT = REPO_ROOT / "packaging" / "codex-bridge.service"


def test_unit_file_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: install Debian's systemd package (.ci/run does)")
    # Point ExecStart at this checkout so the executable check is real.
    unit = tmp_path / "codex-bridge.service"
    unit.write_text(UNIT.read_text().replace("/opt/codex-bridge", str(REPO_ROOT)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    about_us = [line for line in result.stderr.splitlines() if "codex-bridge" in line]
    assert about_us == [], about_us


def test_unit_file_promises() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    service = parser["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "mixed"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert "serve" in service["ExecStart"]
