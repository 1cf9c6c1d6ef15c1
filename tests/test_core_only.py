"""The core needs only pyzmq and msgpack: with every optional package blocked from import (a meta path
hook in a fresh interpreter), all of zcall but the integrations imports, serves and calls, and the
integrations fail with an ImportError that names the extra to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from helpers.cli_support import REPO_ROOT

BLOCKED = ("prometheus_client", "opentelemetry", "kubernetes_validate", "yaml", "jsonschema", "hypothesis")

PROGRAM = r"""
import importlib, importlib.abc, pkgutil, sys

BLOCKED = %r

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the core must not need it")
        return None

sys.meta_path.insert(0, Block())
import zcall

skipped = []
for mod in pkgutil.walk_packages(zcall.__path__, "zcall."):
    if mod.name.startswith("zcall.integrations."):
        continue
    importlib.import_module(mod.name)
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED], "an optional package was imported"

svc = zcall.Service("core")
@svc.method
def double(x):
    return 2 * x

with zcall.AsyncServer(svc) as server, zcall.AsyncClient(server.endpoint, timeout=5) as client:
    assert client.call_async("double", 21).result(5) == 42
    with zcall.SyncClient(server.endpoint, timeout=5) as sync:
        assert sync.call("double", 2) == 4
    from zcall.tools.cli import main
    assert main(["ping", "--wait", "5", server.endpoint]) == 0
    try:
        main(["stats", "--prometheus", server.endpoint])
    except SystemExit as exc:
        assert exc.code == 2, exc.code
    else:
        raise AssertionError("stats --prometheus worked without prometheus_client")

for name, extra in (("prometheus", "zcall[prometheus]"), ("opentelemetry", "zcall[opentelemetry]")):
    try:
        importlib.import_module("zcall.integrations." + name)
    except ImportError as exc:
        assert extra in str(exc), exc
    else:
        raise AssertionError(name + " imported without its extra")
print("CORE OK")
"""


def test_the_core_imports_and_works_with_only_pyzmq_and_msgpack() -> None:
    argv = [sys.executable, "-c", PROGRAM % (BLOCKED,)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "CORE OK" in r.stdout
    assert "needs prometheus_client" in r.stderr  # what the user is told by zcall stats --prometheus


def test_the_runtime_dependencies_are_pyzmq_and_msgpack_only() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0] for d in project["dependencies"]] == ["pyzmq", "msgpack"]
    extras = project["optional-dependencies"]
    assert {"prometheus", "opentelemetry", "test"} <= set(extras)
    test = " ".join(extras["test"])
    for needed in ("prometheus_client", "opentelemetry-sdk", "kubernetes-validate"):
        assert needed in test  # CI's pip install -e '.[test]' covers the integrations
