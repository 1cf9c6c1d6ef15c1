"""The shared tool pieces: the READY line (``zcall.tools.ready``) and the ``MODULE:ATTR`` loader
(``zcall.tools.targets``)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

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
