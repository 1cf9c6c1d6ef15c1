"""The shared tool pieces: the READY line (``zcall.tools.ready``), the ``MODULE:ATTR`` loader
(``zcall.tools.targets``) and the process helper (``zcall.tools.process``) as the launcher uses it."""

from __future__ import annotations

import io
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.cli_support import wait_gone
from zcall.server.signals import StopSignal
from zcall.testing import spawn
from zcall.tools.process import SpawnError, start, stop_all
from zcall.tools.ready import announce, format_ready, parse_ready
from zcall.tools.targets import TargetError, load_service, load_target, split_target

# -- the READY line ----------------------------------------------------------------------------------


def test_ready_line_round_trips_with_and_without_a_name() -> None:
    assert format_ready("tcp://127.0.0.1:5555") == "READY tcp://127.0.0.1:5555"
    line = format_ready("ipc:///tmp/x.sock", name="calc")
    assert line == "READY ipc:///tmp/x.sock name=calc"
    ready = parse_ready(line)
    assert ready is not None
    assert (ready.endpoint, ready.name, ready.fields) == ("ipc:///tmp/x.sock", "calc", {"name": "calc"})
    out = io.StringIO()
    announce("tcp://127.0.0.1:1", "a", file=out)
    assert out.getvalue() == "READY tcp://127.0.0.1:1 name=a\n"


def test_ready_lines_of_other_programs_keep_their_rest_of_line_endpoint() -> None:
    """What ``ProcessHandle.endpoint`` always was for a user's ``READY ...`` line: the rest of it."""
    cases = {
        "READY tcp://127.0.0.1:1234": "tcp://127.0.0.1:1234",
        "READY 4242": "4242",
        "READY": "",
        "READY here and there": "here and there",
        "READY x=1": "x=1",  # a field never comes first
    }
    for line, endpoint in cases.items():
        ready = parse_ready(line)
        assert ready is not None and ready.endpoint == endpoint and ready.name is None, line
    ready = parse_ready("READY tcp://h:1 name=b sync=tcp://h:2")  # an unknown field is kept, not fatal
    assert ready is not None and ready.endpoint == "tcp://h:1" and ready.fields["sync"] == "tcp://h:2"
    launched = parse_ready("LAUNCHED 3 peers (Ctrl-C to stop)", "LAUNCHED")  # another prefix
    assert launched is not None and launched.endpoint == "3 peers (Ctrl-C to stop)"
    assert parse_ready("noise") is None


def test_a_name_that_cannot_stand_in_the_line_is_refused() -> None:
    for bad in ("", "a b", "tab\there"):
        with pytest.raises(ValueError, match="white space"):
            format_ready("tcp://h:1", name=bad)
    with pytest.raises(ValueError, match="not an endpoint"):
        format_ready("")


# -- the MODULE:ATTR loader --------------------------------------------------------------------------


def test_load_target_imports_dotted_attributes_with_clear_errors(tmp_path: Path) -> None:
    pkg = tmp_path / "zc_target_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(
        "import zcall\nclass Holder:\n    svc = zcall.Service('held')\nnot_a_service = 3\n"
    )
    (tmp_path / "zc_broken_mod.py").write_text("import zc_missing_dependency_xyz\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert load_target("zc_target_pkg.mod:Holder.svc").name == "held"
        assert load_service("zc_target_pkg.mod:Holder.svc").name == "held"
        with pytest.raises(TargetError, match=r"zc_target_pkg\.mod:Holder has no attribute 'nope'"):
            load_target("zc_target_pkg.mod:Holder.nope")
        with pytest.raises(TargetError, match=r"cannot import module 'zc_target_pkg\.absent'"):
            load_target("zc_target_pkg.absent:x")
        # a module that exists but fails to import one of *its* imports: that traceback is the user's
        with pytest.raises(ModuleNotFoundError, match="zc_missing_dependency_xyz"):
            load_target("zc_broken_mod:x")
        with pytest.raises(TypeError, match=r"is a int, not a zcall\.Service"):
            load_service("zc_target_pkg.mod:not_a_service")
    finally:
        sys.path.remove(str(tmp_path))
    for bad in ("no_colon", ":attr", "module:"):
        with pytest.raises(TargetError, match="MODULE:ATTR"):
            split_target(bad)


def test_a_missing_module_whose_name_starts_like_a_missing_dependency_is_not_misreported(
    tmp_path: Path,
) -> None:
    """``foo_bar`` failing on its own ``import foo`` is foo_bar's bug (a traceback), not "no foo_bar"."""
    (tmp_path / "zc_prefix_mod.py").write_text("import zc_prefix\n")  # the missing name is a prefix
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ModuleNotFoundError, match="'zc_prefix'"):
            load_target("zc_prefix_mod:x")
    finally:
        sys.path.remove(str(tmp_path))


# -- the process helper, as the launcher drives it ---------------------------------------------------


def test_callbacks_get_each_line_and_the_ready_line_is_parsed_not_relayed() -> None:
    code = (
        "import sys, time; print('one', flush=True); "
        "sys.stderr.write('e1\\ne2\\ne3\\n'); sys.stderr.flush(); "
        "print('READY tcp://127.0.0.1:9 name=x', flush=True); print('two', flush=True); time.sleep(60)"
    )
    out: list[str] = []
    err: list[str] = []
    got_two = threading.Event()

    def on_out(line: str) -> None:
        out.append(line)
        if line == "two":
            got_two.set()

    with start(
        [sys.executable, "-c", code], on_stdout=on_out, on_stderr=err.append, stderr_lines=2
    ) as handle:
        ready = handle.wait_ready(10)
        assert (ready.endpoint, ready.name) == ("tcp://127.0.0.1:9", "x")
        assert got_two.wait(10)
        assert out == ["one", "two"]  # every line but READY; nothing queued for expect
        assert handle.stdout_lines == []
    assert err == ["e1", "e2", "e3"]
    assert handle.stderr == "e2\ne3\n"  # the tail kept for an error message


def test_wait_ready_gives_up_when_a_stop_is_requested() -> None:
    """What lets the launcher wait for a child and for Ctrl-C at once: the StopSignal's self-pipe."""
    code = "import time; time.sleep(60)"
    with start([sys.executable, "-c", code]) as handle:
        stop = StopSignal()  # not installed: only request() stops it
        threading.Timer(0.2, stop.request, args=("test",)).start()
        t0 = time.monotonic()
        with pytest.raises(SpawnError, match=r"stopped waiting for a 'READY' line \(test\)"):
            handle.wait_ready(30, stop=stop)
        assert time.monotonic() - t0 < 10  # long before the 30 s timeout
        assert handle.alive()


def test_stop_all_kills_what_ignores_the_signal_and_says_so() -> None:
    ignores = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('READY -', flush=True); time.sleep(60)"
    )
    polite = "import time; print('READY -', flush=True); time.sleep(60)"
    handles = [spawn(["-c", ignores]), spawn(["-c", polite])]
    t0 = time.monotonic()
    stop_all(handles, timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert [h.returncode for h in handles] == [-signal.SIGKILL, -signal.SIGTERM]
    assert [h.killed for h in handles] == [True, False]
    assert wait_gone([h.pid for h in handles], timeout=0) == []  # reaped by pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_die_with_parent_ends_the_child_when_its_parent_is_killed() -> None:
    """A middle process starts a grandchild with die_with_parent; SIGKILL the middle one: the grandchild
    gets SIGTERM from the kernel (nothing else tells it: its stdin is /dev/null)."""
    middle = (
        "import sys, time; from zcall.tools.process import start; "
        "h = start([sys.executable, '-c', 'import time; time.sleep(60)'], die_with_parent=True); "
        "print('READY', h.pid, flush=True); time.sleep(60)"
    )
    with spawn(["-c", middle]) as parent:
        grandchild = int(parent.endpoint)
        assert wait_gone([grandchild], timeout=0) == [grandchild]  # alive
        parent.kill()
        parent.wait(10)
    assert wait_gone([grandchild], timeout=10) == []
