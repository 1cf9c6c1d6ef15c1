"""Running a handler: the one place that sets ``current_call()`` around it, wherever it runs.

A server only chooses *where* a handler runs (its loop, its REP thread, a pool thread, a task); these
functions do the running, so the call context (and the queue-expiry rule) is the same everywhere.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Callable
from typing import Any

from .context import CallContext, _current
from .dispatch import NEVER_AWAITABLE, Expired

__all__ = [
    "HandlerExit",
    "guarded",
    "run_plain",
    "run_queued",
    "run_to_completion",
    "start_task",
    "task_context",
]

_monotonic = time.monotonic


def run_plain(call: CallContext) -> Any:
    """Call the handler of ``call`` in this thread, with ``current_call()`` set; returns or raises."""
    token = _current.set(call)
    try:
        return call._entry.fn(*call._args, **call._kwargs)  # type: ignore[union-attr]
    finally:
        _current.reset(token)


def run_queued(call: CallContext) -> Any:
    """``run_plain`` for a call that waited in a queue: not started once its deadline has passed."""
    deadline = call.deadline
    if deadline is not None and _monotonic() >= deadline:
        raise Expired
    return run_plain(call)


class HandlerExit(Exception):
    """A coroutine handler raised ``SystemExit`` or ``KeyboardInterrupt``: carried as an ordinary
    exception, because an asyncio task re-raises those two out of the event loop (killing it)."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        super().__init__(f"{type(original).__name__}: {original}")


async def guarded(coro: Any) -> Any:
    """Await a coroutine handler so that nothing it raises can stop the loop it runs on."""
    try:
        return await coro
    except (SystemExit, KeyboardInterrupt) as exc:
        raise HandlerExit(exc) from None


def start_task(loop: asyncio.AbstractEventLoop, coro: Any, call: CallContext) -> asyncio.Task[Any]:
    """A task running the handler's coroutine (or awaitable) ``coro`` for ``call``: guarded, with
    ``current_call()`` set. A task cancelled before its first step never starts ``coro``; it is closed
    then, so a handler stopped before it ran leaves no "never awaited" coroutine behind."""
    task = loop.create_task(guarded(coro), context=task_context(call))
    close = getattr(coro, "close", None)
    if close is not None:
        task.add_done_callback(lambda _: close())  # a no-op for a coroutine that ran to its end
    return task


def task_context(call: CallContext) -> contextvars.Context:
    """A context for the task that runs a coroutine handler: the current one, with ``current_call()`` set."""
    ctx = contextvars.copy_context()
    ctx.run(_current.set, call)
    return ctx


def run_to_completion(call: CallContext, new_loop: Callable[[], asyncio.AbstractEventLoop]) -> Any:
    """Run the handler of ``call`` to its end in this thread, coroutine handlers included (REP).

    A coroutine handler runs on the loop ``new_loop()`` returns (the server's private one), with
    ``current_call()`` set for the whole of it."""
    token = _current.set(call)
    try:
        result = call._entry.fn(*call._args, **call._kwargs)  # type: ignore[union-attr]
        if call._entry.is_coroutine or (type(result) not in NEVER_AWAITABLE and inspect.isawaitable(result)):  # type: ignore[union-attr]
            result = new_loop().run_until_complete(result)
        return result
    finally:
        _current.reset(token)
