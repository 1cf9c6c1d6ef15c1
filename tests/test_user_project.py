"""docs/testing.md's complete example, run the way a user runs it: a fresh project (``myapp/`` beside
``tests/``, not installed) in a temporary directory, and pytest as a subprocess from its root.

The project's files are the documentation's own code blocks, so the page cannot drift from what works.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli_support import REPO_ROOT

pytestmark = pytest.mark.timeout(120)

DOC = REPO_ROOT / "docs" / "testing.md"
PYTEST = Path(sys.executable).with_name("pytest")
QUICK = ("-q", "-k", "tcp_and_ipc")
"""One test of the example (no child process): enough to show the project imports."""


def doc_files() -> dict[str, str]:
    """``{"myapp/service.py": text, "tests/test_orders.py": text, "conftest": ...}`` from the page."""
    text = DOC.read_text()
    files = {}
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        m = re.match(r"# (\w+/\w+\.py)\n", block)
        if m:
            files[m[1]] = block
    conftest = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "pytest_plugins" in b)
    files["conftest.py"] = conftest
    toml = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert len(toml) == 1, toml
    files["pyproject.toml"] = toml[0]
    return files


def make_project(root: Path, *, with_config: bool, conftest_at_root: bool = False) -> Path:
    files = doc_files()
    (root / "myapp").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "myapp" / "__init__.py").write_text("")
    (root / "myapp" / "service.py").write_text(files["myapp/service.py"])
    (root / "tests" / "test_orders.py").write_text(files["tests/test_orders.py"])
    (root / ("conftest.py" if conftest_at_root else "tests/conftest.py")).write_text(files["conftest.py"])
    if with_config:
        (root / "pyproject.toml").write_text(files["pyproject.toml"])
    return root


def run(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A user's shell: the venv's tools on PATH, no PYTHONPATH, nothing of this pytest run inherited."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PYTEST")}
    env["PATH"] = f"{PYTEST.parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL
    )


def test_the_documented_setup_runs_the_example(tmp_path: Path) -> None:
    project = make_project(tmp_path / "shop", with_config=True)
    r = run(project, str(PYTEST))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"\b4 passed\b", r.stdout), r.stdout  # 3 tests, the first over tcp and over ipc
    r = run(project, sys.executable, "-m", "pytest", "tests/", *QUICK)
    assert r.returncode == 0, r.stdout + r.stderr


def test_without_it_pytest_tests_cannot_import_the_project(tmp_path: Path) -> None:
    """What the page explains: ``pytest tests/`` does not put the project root on sys.path."""
    project = make_project(tmp_path / "shop", with_config=False)
    r = run(project, str(PYTEST), "tests/", "-q")
    assert r.returncode != 0
    assert "ModuleNotFoundError: No module named 'myapp'" in r.stdout, r.stdout
    # the two other ways the page names
    r = run(project, sys.executable, "-m", "pytest", "tests/", *QUICK)
    assert r.returncode == 0, r.stdout + r.stderr
    rooted = make_project(tmp_path / "rooted", with_config=False, conftest_at_root=True)
    r = run(rooted, str(PYTEST), "tests/", *QUICK)
    assert r.returncode == 0, r.stdout + r.stderr
