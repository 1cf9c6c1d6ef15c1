"""The one ``MODULE:ATTR`` loader: what ``zcall serve``, a topology's ``target`` and ``python -m zcall.testing
serve`` name, imported with errors that say what to do instead of a traceback.

``ATTR`` may be dotted (``myapp.services:registry.pricing``). The current directory is importable while
loading (a console script does not put it on ``sys.path`` by itself), so ``zcall serve app:service``
works from the directory that holds ``app.py``; it is *appended* to the path, after the standard
library and installed packages, so a file there named like a standard module (``json.py``) never
shadows it. ``check_own_code`` refuses what is not the user's own code (builtins, the standard
library): ``zcall serve builtins:eval`` must not put ``eval`` on the network.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from ..service.registry import Service

__all__ = ["TargetError", "check_own_code", "load_service", "load_target", "split_target"]


class TargetError(ValueError):
    """A target that cannot be loaded as written (bad form, missing module or attribute)."""


def split_target(target: str) -> tuple[str, str]:
    """``"pkg.mod:attr.sub"`` → ``("pkg.mod", "attr.sub")``; ``TargetError`` unless it has that form."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise TargetError(f"expected MODULE:ATTR (like 'myapp.services:pricing'), got {target!r}")
    if module_name.startswith("."):
        raise TargetError(
            f"{module_name!r} is a relative module name: give the whole dotted name ({target!r})"
        )
    return module_name, attr


def load_target(target: str, *, cwd_on_path: bool = True) -> Any:
    """Import ``module:attr`` and return the attribute.

    ``TargetError`` when the form is wrong, the module itself is missing, or it lacks the attribute. An
    import error raised *inside* the module (a dependency of it missing, a bug) propagates as it is: that
    is the user's traceback to read.
    """
    module_name, attr = split_target(target)
    if cwd_on_path and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):  # the module, or its package
            raise TargetError(
                f"cannot import module {module_name!r} (from {os.getcwd()}): {exc}; "
                "run from the directory that holds it or add that directory to PYTHONPATH"
            ) from None
        raise
    done: list[str] = []
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = f"module {module_name!r}" if not done else f"{module_name}:{'.'.join(done)}"
            raise TargetError(f"{where} has no attribute {part!r} (looking up {target!r})") from None
        done.append(part)
    return obj


def _top(module: str | None) -> str:
    return (module or "").split(".")[0]


def check_own_code(target: str, obj: Any) -> None:
    """``TargetError`` unless ``obj`` (what ``target`` names) is the application's own code: not a
    builtin, not the standard library's (those would serve ``eval``, ``os.system`` ... to the network),
    not zcall's own (call it on anything but a ``Peer`` or ``Service``, which are served as they are)."""
    module_name, _ = split_target(target)
    stdlib = sys.stdlib_module_names
    owner = getattr(obj, "__module__", None) if not isinstance(obj, type(sys)) else obj.__name__
    foreign = stdlib | {"builtins", "zcall"}  # zcall's own objects serve as Peers or Services only
    if _top(module_name) in foreign or inspect.isbuiltin(obj) or _top(owner) in foreign:
        raise TargetError(
            f"{target!r} is not your code (a builtin or the standard library's): zcall serve serves a Peer, "
            "a Service, or the public methods of your own module, class or object"
        )


def load_service(target: str, *, cwd_on_path: bool = True) -> Service:
    """``load_target``, then the ``Service`` there: the attribute itself, or what calling it returns (a
    factory). ``TypeError`` when it is neither."""
    obj = load_target(target, cwd_on_path=cwd_on_path)
    if isinstance(obj, Service):
        return obj
    if not callable(obj):
        raise TypeError(f"{target} is a {type(obj).__name__}, not a zcall.Service (nor a factory of one)")
    made = obj()
    if not isinstance(made, Service):
        raise TypeError(f"{target}() returned a {type(made).__name__}, not a zcall.Service")
    return made
