"""``zcall serve``'s targets: a bad one is a usage error (exit 2, one clear line, no traceback), only the
application's own code is served, the current directory never shadows the standard library, and a
Service can leave its introspection methods out (docs/security.md, "What a server exposes").

The commands run as a user runs them: the ``zcall`` console script of this environment (``python -m
zcall`` would put the current directory first on the path itself, before zcall even starts).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import zcall
from helpers.hardening import REPO_ROOT, TESTS_DIR
from zcall.testing import ProcessHandle
from zcall.tools.process import child_env, start

pytestmark = pytest.mark.timeout(60)

ZCALL = str(Path(sys.executable).parent / "zcall")
NOT_YOURS = "is not your code"


def zcall_run(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ZCALL, *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=child_env(pythonpath=[TESTS_DIR]),
        stdin=subprocess.DEVNULL,
    )


def zcall_serve(
    target: str, cwd: Path = REPO_ROOT, pythonpath: tuple[Path, ...] = (TESTS_DIR,)
) -> ProcessHandle:
    h = start([ZCALL, "serve", target, "--grace", "0.5"], cwd=cwd, pythonpath=pythonpath)
    try:
        h.wait_ready(15)
    except BaseException:
        h.stop(2)
        raise
    return h


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("no_such_module_xyz:thing", "cannot import module 'no_such_module_xyz'"),
        ("helpers.cli_targets:no_such_attr", "has no attribute 'no_such_attr'"),
        ("helpers.cli_targets:Api.nope", "has no attribute 'nope'"),
        ("helpers.cli_targets", "expected MODULE:ATTR"),
        (":hello", "expected MODULE:ATTR"),
        ("helpers.cli_targets:", "expected MODULE:ATTR"),
        ("builtins:eval", NOT_YOURS),
        ("builtins:exec", NOT_YOURS),
        ("os:system", NOT_YOURS),
        ("os:path", NOT_YOURS),  # a standard module
        ("json:dumps", NOT_YOURS),
        ("subprocess:Popen", NOT_YOURS),
        ("helpers.cli_targets:system", NOT_YOURS),  # os.system, reached through the user's module
        ("helpers.cli_targets:subprocess", NOT_YOURS),
        ("helpers.cli_targets:loads", NOT_YOURS),
        ("zcall:SyncClient", NOT_YOURS),  # zcall's own objects, but Peer and Service instances
        ("zcall:Peer", NOT_YOURS),
        ("zcall.errors:ZcallError", NOT_YOURS),
        ("zcall.tools.cli:main", NOT_YOURS),
        ("zcall.testing:spawn", NOT_YOURS),
    ],
)
def test_a_bad_target_is_a_usage_error_with_one_clear_line(target: str, says: str) -> None:
    r = zcall_run("serve", target)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("target", [".rel:x", "msgpack:unpackb"])
def test_every_other_bad_target_is_a_usage_error_too(target: str) -> None:
    r = zcall_run("serve", target)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]


def served_methods(endpoint: str) -> list[str]:
    with zcall.SyncClient(endpoint, timeout=10.0) as c:
        return sorted(m["name"] for m in c.call("zcall.methods") if not m["name"].startswith("zcall."))


def test_the_applications_own_function_is_served() -> None:
    with zcall_serve("helpers.cli_targets:hello") as h:
        assert served_methods(h.endpoint) == ["hello"]
        with zcall.SyncClient(h.endpoint, timeout=10.0) as c:
            assert c.call("hello") == "hello"


def test_only_a_classs_own_methods_are_served_not_those_it_inherits_from_builtins() -> None:
    with zcall_serve("helpers.cli_targets:Api") as h:
        assert served_methods(h.endpoint) == ["hello"]


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory with an application module and a ``json.py`` that must never be imported."""
    (tmp_path / "json.py").write_text(
        'raise ImportError("the json.py of the current directory was imported")\n'
    )
    (tmp_path / "app.py").write_text(
        "import json\nimport sys\n\nimport zcall\n\nservice = zcall.Service('app')\n\n\n"
        "@service.method\ndef where() -> dict:\n"
        "    return {'json': json.__file__, 'path': sys.path}\n"
    )
    yield tmp_path


def test_the_current_directory_is_importable_but_never_shadows_the_standard_library(app_dir: Path) -> None:
    with (
        zcall_serve("app:service", cwd=app_dir, pythonpath=()) as h,  # app is found in the cwd
        zcall.SyncClient(h.endpoint, timeout=10.0) as c,
    ):
        where = c.call("where")
    assert not where["json"].startswith(str(app_dir)), where["json"]  # the standard library's json
    assert where["path"][-1] == str(app_dir)  # appended: after the standard library and site-packages
    assert str(app_dir) not in where["path"][:-1]


def test_a_service_without_introspection_hides_its_methods_and_metrics() -> None:
    with zcall_serve("helpers.cli_targets:quiet") as h, zcall.SyncClient(h.endpoint, timeout=10.0) as c:
        assert c.call("answer") == 42
        for hidden in ("zcall.methods", "zcall.stats"):
            with pytest.raises(zcall.MethodNotFound):
                c.call(hidden)
        assert c.call("zcall.ping") == {"service": "quiet"}  # no pid, no uptime
        assert c.call("zcall.health")["status"] == "SERVING"  # the probes stay
        r = zcall_run("ls", h.endpoint)
        assert r.returncode == 1 and "zcall.methods" in r.stderr, r.stderr
    with zcall_serve("helpers.cli_targets:hello") as h, zcall.SyncClient(h.endpoint, timeout=10.0) as c:
        assert set(c.call("zcall.ping")) == {"service", "pid", "uptime"}  # by default: all of it
        assert "methods" in c.call("zcall.stats")


class IntrospectionForAdminsOnly(zcall.ServerInterceptor):
    """docs/security.md's example: zcall.methods and zcall.stats for some callers only."""

    def on_call(self, call: zcall.CallContext) -> None:
        if call.method in ("zcall.methods", "zcall.stats") and call.headers.get("role") != "admin":
            raise zcall.Rejected(zcall.StatusCode.PERMISSION_DENIED, "admins only")
        if call.method == "secret" and call.headers.get("role") != "admin":
            raise zcall.Rejected(zcall.StatusCode.PERMISSION_DENIED, "admins only")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_interceptor_keeps_introspection_to_some_callers_but_not_names_or_signatures(kind: str) -> None:
    """What docs/security.md says an interceptor can and cannot hide: it refuses zcall.methods and
    zcall.stats (ping and health stay), but the close matches of METHOD_NOT_FOUND and the signature in
    INVALID_ARGUMENTS are decided before it runs, so a refused caller still learns them."""
    svc = zcall.Service("guarded", interceptors=[IntrospectionForAdminsOnly()])

    @svc.method
    def secret(account: str, amount: int) -> int:
        return amount

    server = (zcall.SyncServer if kind == "sync" else zcall.AsyncServer)(svc).start()
    try:
        with zcall.SyncClient(server.endpoint, timeout=10.0) as c:
            admin = c.options(headers={"role": "admin"})
            for method in ("zcall.methods", "zcall.stats"):
                with pytest.raises(zcall.PermissionDenied):
                    c.call(method)
                admin.call(method)
            assert c.call("zcall.ping")["service"] == "guarded"
            assert c.call("zcall.health")["status"] == "SERVING"
            with pytest.raises(zcall.PermissionDenied):
                c.call("secret", "a", 1)
            with pytest.raises(zcall.MethodNotFound) as nf:
                c.call("secrets")
            assert nf.value.data == {"close": ["secret"]}  # the name, to a caller refused it
            with pytest.raises(zcall.InvalidArguments) as bad:
                c.call("secret")
            assert "(account: str, amount: int) -> int" in bad.value.message  # and its signature
    finally:
        server.stop(0.5)
