"""Every ```python block of README.md is a whole program: run each as a user would (saved to a file in
an empty directory, ``python file.py``, real servers) and check what its ``# prints X`` comments say.

A block fails if it exits non-zero, writes a traceback, prints nothing, or misses one of its
``# prints X`` lines (X is an exact line of its output, or a prefix when it ends with ``...``; a remark
after two spaces is not part of it). A block with nothing to check fails too: every example shows its
result.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from helpers.cli_support import REPO_ROOT
from zcall.testing import spawn

pytestmark = pytest.mark.timeout(60)

README = REPO_ROOT / "README.md"
_PRINTS = re.compile(r"#\s*prints\s+(.+?)(?:\s{2,}.*)?$")


def blocks() -> list[tuple[str, str]]:
    """(the heading above it, the code) for every ```python block, in order."""
    found = []
    heading = "top"
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.strip() == "```python":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            found.append((heading, "\n".join(lines[i + 1 : j]) + "\n"))
            i = j
        i += 1
    return found


def expectations(code: str) -> list[str]:
    return [m[1] for line in code.splitlines() if (m := _PRINTS.search(line))]


def _ids() -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for heading, _ in blocks():
        slug = re.sub(r"\W+", "-", heading.lower()).strip("-")[:40]
        seen[slug] = seen.get(slug, 0) + 1
        out.append(slug if seen[slug] == 1 else f"{slug}-{seen[slug]}")
    return out


def test_the_readme_has_runnable_blocks_and_each_says_what_it_prints() -> None:
    found = blocks()
    assert len(found) >= 7, [h for h, _ in found]
    for heading, code in found:
        assert expectations(code), f"the block under {heading!r} has no '# prints' line"


@pytest.mark.parametrize("index", range(len(blocks())), ids=_ids())
def test_a_readme_block_runs_and_prints_what_it_says(index: int, tmp_path: Path) -> None:
    heading, code = blocks()[index]
    program = tmp_path / "example.py"
    program.write_text(code)
    with spawn([str(program)], ready_prefix=None, cwd=tmp_path, own_group=True, env=_user_env()) as handle:
        lines = handle.output(45)
        code_ = handle.wait()
    stderr = handle.stderr
    assert code_ == 0, f"{heading}: exit {code_}\nstdout: {lines}\nstderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert lines, f"{heading}: printed nothing"
    for expected in expectations(code):
        if expected.endswith("..."):
            ok = any(line.startswith(expected[:-3]) for line in lines)
        else:
            ok = expected in lines
        assert ok, f"{heading}: no line {expected!r} in\n{lines}\nstderr:\n{stderr}"


def _user_env() -> dict[str, str]:
    """Nothing from this test run: zcall is found as installed, not through tests/ or PYTHONPATH."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PYTEST")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
