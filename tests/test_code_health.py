"""The code-health bar runs with the tests, so CI enforces it: ruff clean, and the package type-checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_is_clean() -> None:
    r = _run("ruff", "check", "src", "tests", "patterns", "scripts")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.timeout(180)
def test_the_package_type_checks() -> None:
    r = _run("mypy", "src/zcall", "--ignore-missing-imports")
    assert r.returncode == 0, r.stdout + r.stderr
