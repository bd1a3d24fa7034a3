"""Engine use shared by the app's sessions, and runs computed ahead in one background thread.

"Live k": after a run with one k, the runs at the neighbouring k (nearest first, a few) are
computed in the background and kept in the app's run cache, so moving the k slider shows them at
once. The rules that keep this safe and cheap:

- one engine is used by one thread at a time (an engine keeps internal caches): every use goes
  through `Worker.foreground(engine)` or the background thread, both under the engine's lock;
- the foreground comes first: while a foreground use waits or runs, the background run stops at its
  next step (it is put back at the front of the plan) and no other starts, so a user waits at most
  one background step;
- a foreground run that is already being computed in the background waits for it (`wait_for`)
  instead of computing it twice;
- each owner (an app session) has its own plan, and a new plan replaces only that owner's: a
  background run no longer in any plan stops at its next step (settings changed, or the slider
  moved on), and one user's moves do not drop another's neighbours. The thread takes the plans'
  first jobs in turn, so every session gets its nearest k soon;
- when the plan is done the thread sleeps on a condition: an idle app uses no CPU.

Plain Python (no Streamlit): the app holds one Worker in st.cache_resource; tests drive it directly.
"""
from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import ElsvizError


class _Stopped(ElsvizError):
    """Raised inside a background run's step callback to stop it; never leaves this module."""


@dataclass
class Job:
    """One background run: key names it (the run cache key), engine is what it uses, and
    run(check) computes and stores the result, calling check(done, total) after every step (it
    notes the progress, and stops the run when the foreground needs the engine or the job is no
    longer wanted)."""

    key: Hashable
    engine: object
    run: Callable = field(repr=False)
    done: int = 0  # steps done so far, of total (from check(done, total); wait_for's tick shows them)
    total: int = 0
    started: float = 0.0  # time.perf_counter() when it started


class Worker:
    """Engine locks and one background thread that works through a plan of Jobs, nearest first."""

    def __init__(self):
        self._locks: dict[int, threading.RLock] = {}  # id(engine) -> its lock (an id reused later shares one: harmless)
        self._guard = threading.Lock()
        self._cond = threading.Condition()
        self._plans: dict[Hashable, list[Job]] = {}  # owner -> its plan, nearest first
        self._wanted: dict[Hashable, set] = {}  # owner -> keys of its current plan, the running job's included
        self._turn = 0  # whose plan goes next (round robin)
        self._running: Job | None = None
        self._foreground = 0  # foreground uses waiting or running
        self._thread: threading.Thread | None = None
        self.done: list[Hashable] = []  # keys finished in the background, in order (for tests and docs)
        self.stopped: list[Hashable] = []  # keys stopped part-way
        self.failed: list[tuple[Hashable, Exception]] = []  # keys whose run raised, with the error

    # -- the engine lock ---------------------------------------------------------------------------
    def lock(self, engine) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(id(engine), threading.RLock())

    @contextmanager
    def foreground(self, engine):
        """Use the engine now: the background stops at its next step and waits until this is done."""
        with self._cond:
            self._foreground += 1
        try:
            with self.lock(engine):
                yield
        finally:
            with self._cond:
                self._foreground -= 1
                self._cond.notify_all()

    # -- the plan ----------------------------------------------------------------------------------
    def submit(self, jobs: list[Job], owner: Hashable = None) -> None:
        """Replace owner's plan with jobs (nearest first). A running job that no plan wants any
        more stops."""
        with self._cond:
            running = None if self._running is None else self._running.key
            self._wanted[owner] = {j.key for j in jobs}
            self._plans[owner] = [j for j in jobs if j.key != running]
            if not jobs:
                self._plans.pop(owner)
                self._wanted.pop(owner)
            if self._plans and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._loop, name="elsviz-live-k", daemon=True)
                self._thread.start()
                atexit.register(self._stop_at_exit)
            self._cond.notify_all()

    def cancel(self, owner: Hashable = None) -> None:
        """Drop owner's plan; a running job that no other plan wants stops at its next step."""
        self.submit([], owner)

    def cancel_all(self) -> None:
        """Drop every plan; a running job stops at its next step."""
        with self._cond:
            self._plans.clear()
            self._wanted.clear()
            self._cond.notify_all()

    def _forget(self, key) -> None:
        """A finished job's key is wanted no more; an owner with nothing left goes (sessions end)."""
        for owner in list(self._wanted):
            self._wanted[owner].discard(key)
            if not self._wanted[owner] and not self._plans.get(owner):
                del self._wanted[owner]
                self._plans.pop(owner, None)

    def _is_wanted(self, key) -> bool:
        return any(key in keys for keys in self._wanted.values())

    def _next_job(self) -> Job:
        """The first job of the next owner's plan, in turn (called with a plan waiting)."""
        owners = [o for o, plan in self._plans.items() if plan]
        owner = owners[self._turn % len(owners)]
        self._turn += 1
        return self._plans[owner].pop(0)

    def running(self) -> Hashable | None:
        with self._cond:
            return None if self._running is None else self._running.key

    def wait_for(self, key, timeout: float | None = None, tick: Callable | None = None) -> bool:
        """If key is being computed in the background, wait until it has finished or stopped; True if
        it was running. tick(job), if given, is called about every 0.25 s meanwhile (a progress bar)."""
        with self._cond:
            job = self._running
            if job is None or job.key != key:
                return False
            gone = lambda: self._running is not job  # noqa: E731
            waited = 0.0
            while not gone() and (timeout is None or waited < timeout):
                self._cond.wait_for(gone, 0.25)
                waited += 0.25
                if tick is not None and not gone():
                    tick(job)
            return True

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until the plan is done and nothing runs in the background; True if so within timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not any(self._plans.values()) and self._running is None, timeout)

    def _stop_at_exit(self) -> None:
        """At interpreter exit: stop the background run at its next step and wait for it (a daemon thread
        killed inside torch during finalization can crash the process)."""
        self.cancel_all()
        self.idle(timeout=30)

    # -- the thread --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: any(self._plans.values()) and not self._foreground)
                job = self._running = self._next_job()
                job.started, job.done = time.perf_counter(), 0
            try:
                with self.lock(job.engine):
                    job.run(lambda done=0, total=0: self._check(job, done, total))
            except _Stopped:
                with self._cond:
                    self.stopped.append(job.key)
                    owners = [o for o, keys in self._wanted.items() if job.key in keys]
                    if owners and not any(job.key == j.key for plan in self._plans.values() for j in plan):
                        self._plans[owners[0]].insert(0, job)  # stopped for the foreground: do it when that is done
            except Exception as err:  # noqa: BLE001 - a failing background run (a k the machine refuses) is dropped
                with self._cond:
                    self.failed.append((job.key, err))
                    self._forget(job.key)
            else:
                with self._cond:
                    self.done.append(job.key)
                    self._forget(job.key)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _check(self, job: Job, done: int = 0, total: int = 0) -> None:
        with self._cond:
            job.done, job.total = done, total
            if self._foreground or not self._is_wanted(job.key):
                raise _Stopped("stopped")
