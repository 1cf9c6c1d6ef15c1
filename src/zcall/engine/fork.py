"""Fork safety: what a child process made by ``os.fork`` (or ``multiprocessing``'s fork start method)
inherits from a parent that used zcall, and how the engine makes it safe.

Only the thread that called ``fork`` survives into the child. The parent's engine thread is gone, but
its loop object, its zmq context and its sockets are still in memory, and libzmq's I/O threads are gone
with the rest. A zcall object made in the child that reached them would wait forever (a call handed to
a loop that nobody runs). So, in the child, right after the fork (``os.register_at_fork``):

- the engine forgets the parent's loop: the next zcall object made in the child starts a fresh engine
  thread, and ``zmq.Context.instance()`` (pyzmq checks the pid) gives it a fresh context;
- the parent's loop is *poisoned*: handing it work raises ``InheritedAcrossFork``, which names what was
  inherited, instead of waiting for a thread that does not exist. A client or server made in the parent
  and used in the child fails at once; closing one is a quiet no-op;
- the parent's objects are kept alive, never closed: closing the inherited loop would unregister the
  parent's file descriptors from the epoll instance parent and child share, and closing inherited zmq
  sockets would talk to I/O threads that do not exist. (pyzmq itself skips the close of a context or
  socket made in another pid.)

What is not covered: a zmq ``Context`` made in the parent and passed explicitly (``context=``) to an
object made in the child cannot be detected; make contexts in the process that uses them.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["InheritedAcrossFork", "after_fork_in_child", "forks_seen", "inherited", "install"]


class InheritedAcrossFork(RuntimeError):
    """A zcall object made before ``os.fork`` was used in the child: its engine thread did not survive."""


_inherited: list[Any] = []  # the parent's loop and zmq context: kept alive on purpose (see above)
_parent_pid: int | None = None
_forks = 0
_installed = False


def forks_seen() -> int:
    """How many forks this process is removed from its first zcall-using ancestor (tests, diagnostics)."""
    return _forks


def _before_fork() -> None:
    global _parent_pid
    _parent_pid = os.getpid()


def _poison(loop: Any, parent: int | None) -> None:
    """Make the inherited ``loop`` refuse work with a clear error instead of queueing it forever."""
    what = (
        f"this zcall object (client, server or peer) was made in process {parent} before os.fork(); "
        f"its engine loop thread, zmq context and sockets did not survive into this child (pid "
        f"{os.getpid()}). Make a new one in the child: zcall objects made after the fork work."
    )

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise InheritedAcrossFork(what)

    for name in ("call_soon_threadsafe", "call_soon", "call_later", "call_at", "create_task"):
        setattr(loop, name, refuse)
    loop._zcall_inherited_from = parent


def inherited(loop: Any) -> bool:
    """True for a loop a forked child inherited from its parent: closing an object that lives on it
    must only mark it closed (its sockets and the shared epoll set are the parent's)."""
    return getattr(loop, "_zcall_inherited_from", None) is not None


def after_fork_in_child() -> None:
    """Reset the engine in a freshly forked child (registered with ``os.register_at_fork``)."""
    global _forks
    from .loop import engine

    _forks += 1
    loop = engine._reset_after_fork()
    if loop is not None:
        _poison(loop, _parent_pid)
        _inherited.append(loop)
    try:
        import zmq

        if zmq.Context._instance is not None:  # pyzmq makes a new one in this pid; keep the old quiet
            _inherited.append(zmq.Context._instance)
    except Exception:  # pyzmq internals moved: nothing to keep
        pass


def install() -> None:
    """Register the fork hooks once per process (the engine module does it on import)."""
    global _installed
    if _installed or not hasattr(os, "register_at_fork"):
        return
    _installed = True
    os.register_at_fork(before=_before_fork, after_in_child=after_fork_in_child)
