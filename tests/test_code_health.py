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


def test_only_the_protocol_package_encodes_or_decodes_messages() -> None:
    """One behaviour, one place: every frame is built and parsed in zcall/protocol/, nowhere else."""
    import ast

    pkg = ROOT / "src" / "zcall"
    offenders = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg)
        if rel.parts[0] == "protocol":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("packb", "unpackb", "Packer", "Unpacker"):
                offenders.append(f"{rel}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names]
                if isinstance(node, ast.ImportFrom) and node.module:
                    names.append(node.module)
                if any(n.split(".")[0] == "msgpack" for n in names):
                    offenders.append(f"{rel}:{node.lineno}: imports msgpack")
            elif isinstance(node, ast.Name) and node.id in ("PROTOCOL_VERSION", "_EVENT_HEAD"):
                offenders.append(f"{rel}:{node.lineno}: builds an envelope with {node.id}")
    assert offenders == [], "frames packed outside zcall/protocol:\n" + "\n".join(offenders)
