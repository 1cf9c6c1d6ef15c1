"""The thread pool that runs plain (blocking) handlers off the loop, with hand-offs batched both ways.

Why not ``loop.run_in_executor``: per call it builds a ``concurrent.futures.Future``, an asyncio future
chained to it, and wakes the loop through its self-pipe for every completion; and a
``ThreadPoolExecutor``'s threads are joined at interpreter exit, so one handler blocked forever keeps a
stopped server's process alive. Here:

- the loop appends a job to a deque and wakes a worker only if one is asleep (never when all are busy);
- a worker appends what it finished to another deque and wakes the loop only if no wake-up is already
  on its way, so a burst of completions costs the loop one wake-up, drained in one pass;
- workers are daemon threads, started on demand up to ``max_workers``: at interpreter exit a handler
  still blocked is abandoned (its thread dies with the process), never waited for;
- a job not yet started can be cancelled (it is then never run).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Job", "Workers"]

log = logging.getLogger("zcall.server")


class Job:
    """One unit of work: ``fn(arg)``; its outcome goes to ``done(job, result, error)`` on the loop."""

    __slots__ = ("fn", "arg", "done", "state")

    PENDING, RUNNING, CANCELLED = 0, 1, 2

    def __init__(
        self, fn: Callable[[Any], Any], arg: Any, done: Callable[[Job, Any, BaseException | None], None]
    ) -> None:
        self.fn = fn
        self.arg = arg
        self.done = done
        self.state = Job.PENDING

    def cancel(self) -> bool:
        """Cancel the job if no worker has started it (True); a running job runs to its end (False)."""
        if self.state == Job.PENDING:  # a worker takes it with one atomic deque pop, then marks it
            self.state = Job.CANCELLED
            return True
        return self.state == Job.CANCELLED


class Workers:
    """Up to ``max_workers`` daemon threads running jobs for one loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_workers: int, name: str = "zcall-worker") -> None:
        if max_workers < 1:
            raise ValueError(f"workers must be >= 1, got {max_workers!r}")
        self.max_workers = max_workers
        self._loop = loop
        self._name = name
        self._inbox: collections.deque[Job] = collections.deque()
        self._outbox: collections.deque[tuple[Job, Any, BaseException | None]] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        # Under _cond: workers asleep and not yet woken, and wake-ups sent but not yet taken. A submit
        # that wakes a sleeper takes it off _sleepers at once, so a burst of submits wakes (or starts)
        # one worker each instead of notifying the same sleeper again and again.
        self._sleepers = 0
        self._signals = 0
        self._threads: list[threading.Thread] = []
        self._wake_scheduled = False
        self._closed = False

    @property
    def threads(self) -> int:
        return len(self._threads)

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return len(self._inbox)

    def submit(self, job: Job) -> None:
        """Queue ``job`` (loop thread). Wakes a sleeping worker, or starts one, only when needed."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        self._inbox.append(job)
        if self._sleepers:
            with self._cond:
                if self._sleepers:
                    self._sleepers -= 1
                    self._signals += 1
                    self._cond.notify()
                    return
        if len(self._threads) < self.max_workers:
            self._start_worker()  # every worker is busy (none asleep): one more, up to the bound

    def close(self) -> None:
        """Stop taking jobs; idle workers exit; busy ones exit when their job returns (never joined)."""
        self._closed = True
        for job in list(self._inbox):
            job.cancel()
        with self._cond:
            self._cond.notify_all()

    def _start_worker(self) -> None:
        t = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
        self._threads.append(t)
        t.start()

    def _work(self) -> None:
        inbox, cond, outbox = self._inbox, self._cond, self._outbox
        while True:
            try:
                job = inbox.popleft()
            except IndexError:
                if self._closed:
                    return
                with cond:
                    self._sleepers += 1
                    while not inbox and not self._closed:
                        cond.wait()
                    if self._signals:  # woken by a submit, which already took us off _sleepers
                        self._signals -= 1
                    else:  # found work (or the close) on our own
                        self._sleepers -= 1
                continue
            if job.state != Job.PENDING:
                continue  # cancelled while queued: never run
            job.state = Job.RUNNING
            try:
                result, error = job.fn(job.arg), None
            except BaseException as exc:  # every way a handler can end is its answer, SystemExit too
                result, error = None, exc
            outbox.append((job, result, error))
            if not self._wake_scheduled:
                self._wake_scheduled = True
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody is left to answer
                    return

    def _deliver(self) -> None:
        """On the loop: hand every finished job to its ``done``, in one pass."""
        self._wake_scheduled = False
        outbox = self._outbox
        while outbox:
            job, result, error = outbox.popleft()
            try:
                job.done(job, result, error)
            except Exception:
                log.exception("finishing a handler's call failed (the server keeps going)")
