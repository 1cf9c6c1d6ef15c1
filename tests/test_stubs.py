"""``zcall stubs``: a typed module from a live server; mypy catches wrong calls through the typed proxy,
and the same calls work at runtime. The server, the CLI, mypy and the program are real processes."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.cli_support import REPO_ROOT, TESTS_DIR, child_env, zcall_cli
from zcall.testing import ProcessHandle, spawn
from zcall.tools.cli.stubs import ServiceListing, render_stubs

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def served() -> Iterator[ProcessHandle]:
    handle = spawn(
        ["-m", "zcall", "serve", "helpers.stub_services:service"], cwd=REPO_ROOT, pythonpath=[TESTS_DIR]
    )
    try:
        yield handle
    finally:
        handle.stop(timeout=5)


@pytest.fixture(scope="module")
def stub(served: ProcessHandle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``zcall stubs ENDPOINT -o inventory_api.py`` in a fresh directory."""
    out = tmp_path_factory.mktemp("stubs") / "inventory_api.py"
    r = zcall_cli("stubs", served.endpoint, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}: inventory (6 methods)" in r.stderr
    return out


GOOD = """
    import asyncio
    import sys
    from typing import cast

    import zcall
    from inventory_api import AsyncInventory, FutureInventory, Inventory


    def blocking(endpoint: str) -> None:
        with zcall.SyncClient(endpoint, timeout=5) as client:
            api = cast(Inventory, client.proxy)
            doubled: int = api.double(21)
            left: int = api.stock.count("widget")
            reserved = api.stock.reserve("widget", 2, note="for bob")
            total: int = api.tally(1, 2, 3, colour="red")
            print("blocking", doubled, left, reserved["left"], total)


    async def awaited(endpoint: str) -> None:
        async with zcall.AsyncClient(endpoint, timeout=5) as client:
            api = cast(AsyncInventory, client.proxy)
            log: list[str] = await api.restock("widget", 10)
            print("awaited", await api.double(2), log)


    def futures(endpoint: str) -> None:
        with zcall.AsyncClient(endpoint, timeout=5) as client:
            api = cast(FutureInventory, client.proxy_async)
            fut = api.stock.count("widget", callback=lambda n: None)
            count: int = fut.result(5)
            print("futures", count)


    if __name__ == "__main__":
        blocking(sys.argv[1])
        asyncio.run(awaited(sys.argv[1]))
        futures(sys.argv[1])
"""

BAD = """
    from typing import cast

    import zcall
    from inventory_api import AsyncInventory, FutureInventory, Inventory


    def wrong(client: zcall.SyncClient, aclient: zcall.AsyncClient) -> None:
        api = cast(Inventory, client.proxy)
        api.double("21")                                   # line 9: str for int
        api.dubble(21)                                     # line 10: no such method
        text: str = api.stock.count("widget")              # line 11: int is not str
        api.stock.reserve(sku="widget")                    # line 12: sku is positional-only
        api.stock.reserve("widget", 1, "note")             # line 13: note is keyword-only
        fapi = cast(FutureInventory, aclient.proxy_async)
        name: str = fapi.double(2).result()                # line 15: Future[int]
        aapi = cast(AsyncInventory, aclient.proxy)
        aapi.restock("widget")                             # line 17: missing qty
"""

EXPECTED = {
    9: 'Argument 1 to "double" of "Inventory" has incompatible type "str"; expected "int"',
    10: '"Inventory" has no attribute "dubble"; maybe "double"?',
    11: 'Incompatible types in assignment (expression has type "int", variable has type "str")',
    12: 'Unexpected keyword argument "sku" for "reserve" of "InventoryStock"',
    13: 'Too many positional arguments for "reserve" of "InventoryStock"',
    15: 'Incompatible types in assignment (expression has type "int", variable has type "str")',
    17: 'Missing positional argument "qty" in call to "restock" of "AsyncInventory"',
}


def test_mypy_checks_calls_through_a_stub_typed_proxy(stub: Path) -> None:
    work = stub.parent
    (work / "good.py").write_text(textwrap.dedent(GOOD))
    (work / "bad.py").write_text(textwrap.dedent(BAD).lstrip("\n"))
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "good.py", "bad.py", stub.name],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=100,
    )
    found: dict[int, list[str]] = {}
    for line in r.stdout.splitlines():
        if ": note: " in line:
            continue
        m = re.match(r"(\w+\.py):(\d+): error: (.*?)\s+\[[\w-]+\]$", line)
        assert m, line
        assert m[1] == "bad.py", f"mypy objects to {m[1]}, which is right:\n{r.stdout}"
        found.setdefault(int(m[2]), []).append(m[3])
    assert r.returncode == 1, r.stdout + r.stderr
    for lineno, message in EXPECTED.items():
        assert message in found.get(lineno, []), (lineno, found)
    assert set(found) == set(EXPECTED), found


def test_calls_through_the_typed_proxy_work_at_runtime(stub: Path, served: ProcessHandle) -> None:
    (stub.parent / "good.py").write_text(textwrap.dedent(GOOD))
    r = subprocess.run(
        [sys.executable, "good.py", served.endpoint],
        cwd=stub.parent,
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "blocking 42 5 3 7", lines
    assert lines[1] == "awaited 4 ['widget +10']", lines
    assert lines[2] == "futures 13", lines


def test_the_stub_shape(stub: Path) -> None:
    text = stub.read_text()
    assert "class Inventory(_Protocol):" in text and "class InventoryStock(_Protocol):" in text
    assert "    def stock(self) -> InventoryStock:" in text  # a dotted prefix is a typed property
    assert "class AsyncInventory(_Protocol):" in text and "    async def restock(" in text
    assert "def double(self, x: int) -> int:" in text and '"""Return twice x.' in text
    assert "def tally(self, *counts: int, **labels: str) -> int:" in text
    assert "import datetime" in text and "when: datetime.date | None = ..." in text
    # a server-side class: Any, and the docstring says what the server has
    assert "def place(self, order: _Any, mode: typing.Literal['fast', 'slow'] = ...) -> _Any:" in text
    assert "order: helpers.stub_services.Order on the server (Any here)" in " ".join(text.split())
    assert "zcall.ping" not in text.split('"""', 2)[2]  # built-ins are left out


def test_an_older_server_without_params_gets_the_same_signatures(served: ProcessHandle) -> None:
    """``params``/``returns`` are parsed back from the ``signature`` text when a server lacks them."""
    import zcall

    with zcall.SyncClient(served.endpoint, timeout=5) as client:
        listing = client.call("zcall.methods")
    old = [{k: v for k, v in m.items() if k not in ("params", "returns", "docstring")} for m in listing]

    def defs(methods: list[dict]) -> list[str]:
        text = render_stubs([ServiceListing("inventory", methods)])
        return [" ".join(d.split()) for d in re.findall(r"def \w+\(.*?\) -> [^:]+:", text, re.S)]

    assert defs(old) == defs(listing)


def test_stubs_to_stdout_and_for_a_missing_server(served: ProcessHandle, unused_tcp_endpoint: str) -> None:
    r = zcall_cli("stubs", served.endpoint, "--name", "Stock")
    assert r.returncode == 0, r.stderr
    assert "class Stock(_Protocol):" in r.stdout and "class AsyncStock(_Protocol):" in r.stdout
    compile(r.stdout, "stub", "exec")
    r = zcall_cli("stubs", unused_tcp_endpoint, "--timeout", "0.3")
    assert r.returncode == 3 and "is a zcall server running there?" in r.stderr


def test_a_name_that_is_also_a_prefix_and_trusted_types() -> None:
    """``stock`` is a method and the prefix of ``stock.count``: its Protocol is callable too. A module
    named with ``--import-types`` keeps its annotations (the stub imports it)."""
    methods = [
        {"name": "stock", "signature": "() -> dict[str, int]"},
        {"name": "stock.count", "signature": "(sku: str) -> int"},
        {"name": "place", "signature": "(order: shop.models.Order) -> shop.models.Order"},
        {"name": "zcall.ping", "signature": "() -> dict"},
    ]
    text = render_stubs([ServiceListing("shop", methods)], import_types=["shop.models"])
    assert "class ShopStock(_Protocol):" in text
    assert "    def __call__(self) -> dict[str, int]:" in text
    assert "    def count(self, sku: str) -> int:" in text
    assert "def place(self, order: shop.models.Order) -> shop.models.Order:" in text
    assert "\n    import shop.models\n" in text  # under TYPE_CHECKING
    untrusted = render_stubs([ServiceListing("shop", methods)])
    assert "def place(self, order: _Any) -> _Any:" in untrusted and "import shop" not in untrusted


def test_a_hostile_listing_cannot_put_code_in_the_stub() -> None:
    """Whatever a server reports, the stub is only classes, ``...`` bodies and typing-time imports:
    names that are not identifiers are left out, text goes into escaped docstrings, annotations that
    are not plain type expressions become Any. Importing it runs no call at all."""
    evil = 'x): pass\nimport os; os.system("echo pwned") #'
    methods = [
        {
            "name": "ok",
            "signature": "(a: int) -> int",
            "docstring": 'ends here """; import os; """',
            "params": [{"name": evil, "kind": "positional_or_keyword", "annotation": "int", "default": None}],
        },
        {
            "name": "typed",
            "signature": "(a: __import__('os').system('x')) -> int",
            "params": [
                {
                    "name": "a",
                    "kind": "positional_or_keyword",
                    "annotation": "__import__('os').system('x')",
                    "default": None,
                }
            ],
            "returns": "antigravity.fly",
        },
        {"name": "bad\nimport os", "signature": "()"},
        {"name": "kind", "signature": "()", "params": [{"name": "a", "kind": "code()", "annotation": None}]},
    ]
    text = render_stubs([ServiceListing('svc """ import os', methods, 'tcp://x """')])
    tree = ast.parse(text)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Call)], text
    runtime_imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert all(
        isinstance(n, ast.ImportFrom) and n.module in ("__future__", "typing") for n in runtime_imports
    )
    assert "def ok(self, *args: _Any, **kwargs: _Any) -> int:" in text  # the bad parameter list: dropped
    assert "def typed(self, a: _Any) -> antigravity.fly:" in text  # a call is no annotation
    assert "\n    import antigravity\n" in text  # a stdlib name, imported for type checkers only
    assert "'bad\\nimport os'" in text  # named in a comment, escaped
    namespace: dict = {}
    exec(compile(text, "stub", "exec"), namespace)  # importing it: classes, nothing else
    assert {"SvcImportOs", "AsyncSvcImportOs", "FutureSvcImportOs"} <= set(namespace)
