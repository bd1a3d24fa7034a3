"""Runs for the pages (the Streamlit side of elsviz.app.runs): cached per parameter set, with a progress bar while they compute.

A run that fails (a k the machine refuses, say) shows its message and the last good result stays
on the page. A run estimated above a few seconds (runs.needs_confirmation) says how long first and
offers a subset of the training set. Estimates come from the work a run implies, counted per path
of the engine, at the pace of the runs this server has timed (runs.Estimator); a running run says
how long is left. Where k cannot be live (each k takes longer than the background may spend on
it), the page says so and offers a subset that makes it live.

Live k: after a run with one k, its neighbouring k are computed in the background (elsviz.app.worker)
into the same run cache, so moving the slider to one of them shows it at once.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import replace

import streamlit as st

from ..errors import ElsvizError
from ..app.runs import (SUBSET_TARGET_S, Estimator, Result, RunCache, RunSpec, StepClock, left_text,
                        needs_confirmation, neighbour_ks, run, run_ks, run_ts, subset_offer, time_left, workload)
from ..app.worker import Job, Worker
from ..machines import k_limit
from ..sampling import branch
from . import data
from .sidebar import settings

BASIS = {"measured": "from the work it implies, at the pace of this set's runs here",
         "carried": "from the work it implies, at the pace of the runs on this machine so far",
         "model": "from the work it implies, at the speed measured for this CPU; nothing has run here yet"}
LIVE_K = 4  # neighbouring k computed in the background after a run with one k (k + 2, k - 2, k + 4, k - 4)
LIVE_MAX_S = 15.0  # ... only those estimated under this (the 1,000 hands on one core: 3-8 s each)
LIVE_TARGET_S = 5.0  # a subset offered to make k live aims at about this per k


@st.cache_resource(show_spinner=False)
def runs_cache() -> RunCache:
    return RunCache(maxsize=256)


@st.cache_resource(show_spinner=False)
def estimator() -> Estimator:
    return Estimator()


@st.cache_resource(show_spinner=False)
def _worker() -> Worker:
    return Worker()


def _session() -> str:
    """This browser session's name for the background worker: each session has its own plan of
    neighbouring k, so that one user's moves do not drop another's."""
    return st.session_state.setdefault("_live_owner", uuid.uuid4().hex)


def engine_use(engine):
    """A context for using an engine in the foreground (one thread at a time; the background yields)."""
    return _worker().foreground(engine)


def _n_keys(train, label) -> int:
    """How many training images serve as keys (those of the class, for a conditional run)."""
    if label is None or train.labels is None:
        return len(train)
    return int((train.labels == label).sum())


def _workload(settings, spec: RunSpec, engine, batch: int = 1, n: int | None = None):
    """The runs.Workload of a spec on the settings' training set (or a random subset of n of its images)."""
    return workload(engine, settings.dataset_key if n is None else (settings.dataset_key, "subset", n), spec.machine,
                    spec.size, spec.label, settings.train.name, batch, n)


def _engine_of(settings, machine: str):
    if settings.engine.machine == machine:
        return settings.engine
    return data.engine(settings.dataset_key, machine, settings.train)


def _timed_run(engine, work, go, clock: StepClock):
    """go(clock) (clock: the step callback); every step it completed is recorded, even if it was stopped."""
    try:
        out = go(clock)
    finally:
        estimator().record(work, clock.steps, engine)
    return out, clock.elapsed


def status_slot():
    """The place of a run's progress bar, reserved whether the run computes or comes from the cache.

    A page's elements are matched to the previous rerun's by their place: a bar (even emptied) that
    only a computing rerun adds shifts every later element by one, and while the next rerun goes
    Streamlit shows the previous rerun's last element a second time. One st.empty() in every rerun
    keeps the places."""
    return st.empty()


def _progress(what: str, plan: list[float], slot):
    """A progress bar in slot and the step callback that moves it, with the time left (plan: seconds per step)."""
    bar = slot.progress(0.0, text=f"{what}: starting ...")
    total = len(plan)
    clock = {"done": 0}

    def callback(frame, elapsed):
        clock["done"] += 1
        done = clock["done"]
        left = left_text(time_left(plan, done, elapsed))
        bar.progress(min(done / max(total, 1), 1.0),
                     text=f"{what}: step {frame.i} (t = {frame.t:.2f}, k = {frame.k}), {done} of {total}"
                          + (f", {left}" if left else ""))

    return bar, callback


def _run_with_progress(engine, work, ks, ts, what, go, slot):
    """go(callback) in the foreground with a progress bar in slot that says how long is left;
    (out, seconds). ks, ts: the k and t of each step it runs."""
    bar, show = _progress(what, estimator().step_plan(work, ks, ts, engine), slot)
    try:
        with engine_use(engine):  # (the clock starts once the engine is free: a background step may end first)
            clock = StepClock(lambda frame: show(frame, clock.elapsed))
            return _timed_run(engine, work, go, clock)
    finally:
        bar.empty()


def _wait_for_background(key, what: str, slot) -> None:
    """Wait for the run under key, which the background is computing, with a progress bar in slot."""
    bar = slot.progress(0.0, text=f"{what}: being computed ahead ...")

    def tick(job):
        if job.done and job.total:
            left = left_text((time.perf_counter() - job.started) / job.done * (job.total - job.done))
            bar.progress(min(job.done / job.total, 1.0), text=f"{what}: computed ahead, {job.done} of {job.total} steps"
                                                            + (f", {left}" if left else ""))

    try:
        _worker().wait_for(key, tick=tick)
    finally:
        bar.empty()


def _use_subset(n: int) -> None:
    st.session_state["limit"] = n


def _seconds(settings, specs, engine, batch: int = 1) -> float:
    """Seconds the runs of specs (one machine: its engine) take one after the other."""
    if not specs:
        return 0.0
    ks = [k for spec in specs for k in run_ks(spec)]
    ts = [t for spec in specs for t in run_ts(spec)]
    return estimator().seconds(_workload(settings, specs[0], engine, batch), ks, ts, engine)


def estimate(settings, spec: RunSpec) -> float:
    """About how many seconds spec takes on the settings' set (0 when it is cached)."""
    return estimate_seconds(settings, [spec])


def _subset(settings, spec: RunSpec, engine, target_s: float) -> tuple[int, float] | None:
    """(images, seconds): the random subset of the settings' set to offer instead of spec's run
    (runs.subset_offer, sized for about target_s), with the estimate of spec on it; or None."""
    n, est = len(settings.train), estimator()
    ks, ts = run_ks(spec), run_ts(spec)
    keys = _n_keys(settings.train, spec.label)

    def seconds(m: int, exact: bool = False) -> float:
        w = _workload(settings, spec, engine, n=max(1, keys * m // n))
        return est.seconds(w if exact else replace(w, images=None), ks, ts)  # (a search: the set's shares of distinct keys)

    sub = subset_offer(n, seconds, target_s)
    if sub is None:
        return None
    scale = seconds(sub, exact=True) / seconds(sub)  # its own share of distinct keys (a subset repeats fewer windows)
    sub = subset_offer(n, lambda m: seconds(m) * scale, target_s) or sub
    return sub, seconds(sub, exact=True)


def spec_run(settings, spec: RunSpec | None = None, *, what: str | None = None, confirm: bool = True) -> Result | None:
    """The Result of `spec` (default: the sidebar's) on the sidebar's training set, cached.

    Raises ElsvizError for a run the machine refuses. Returns None while a long run waits for the
    user to confirm it (a message with a button is on the page). Takes one place on the page
    whatever happens (status_slot).
    """
    spec = spec or settings.spec
    key = (settings.dataset_key, spec)
    cache = runs_cache()
    slot = status_slot()
    hit = cache.get(key)
    if hit is None and _worker().running() == key:  # being computed in the background: finish it there
        _wait_for_background(key, what or spec.describe(), slot)
        hit = cache.get(key)
    if hit is not None:
        return hit
    engine = _engine_of(settings, spec.machine)
    ks = run_ks(spec)  # a bad k fails here, before any work
    what = what or spec.describe()
    work = _workload(settings, spec, engine)
    seconds = _seconds(settings, [spec], engine)
    confirmed = st.session_state.setdefault("_confirmed_runs", set())
    if confirm and needs_confirmation(seconds) and key not in confirmed:
        n = len(settings.train)
        box = slot.container()
        box.warning(f"{what} on {n:,} training images will take about {duration(seconds)} on this machine "
                    f"({BASIS[estimator().basis(work)]}).")
        cols = box.columns(2)
        cols[0].button(f"Run it anyway (about {duration(seconds)})", key=f"go_{hash(key)}",
                       on_click=confirmed.add, args=(key,))
        sub = _subset(settings, spec, engine, SUBSET_TARGET_S)
        if sub is not None:
            cols[1].button(f"Use a random subset of {sub[0]:,} images (about {duration(sub[1])})",
                           key=f"sub_{hash(key)}", on_click=_use_subset, args=(sub[0],))
        return None
    traj, took = _run_with_progress(engine, work, ks, run_ts(spec), what, lambda cb: run(engine, spec, cb), slot)
    result = Result(settings.dataset_key, settings.train, engine, spec, traj, took)
    cache.put(key, result)
    return result


# -- live k ----------------------------------------------------------------------------------------
def _live_base(settings, spec: RunSpec):
    """What the neighbouring runs share with the shown one: everything but k."""
    return settings.dataset_key, replace(spec, k=0)


def live_plan(settings, spec: RunSpec) -> list[Job]:
    """Background jobs for the k next to spec's (nearest first), not yet cached; [] where live k
    does not apply: a schedule, IS; a neighbour estimated above LIVE_MAX_S is left out."""
    if spec.machine == "is" or not isinstance(spec.k, int):
        return []
    engine = _engine_of(settings, spec.machine)
    work = _workload(settings, spec, engine)
    kmax = k_limit(spec.machine, tuple(settings.train.shape[1:]), spec.size)
    jobs = []
    for k in neighbour_ks(spec.k, kmax, LIVE_K):
        other = replace(spec, k=k)
        key = (settings.dataset_key, other)
        if runs_cache().get(key) is not None:
            continue
        if _seconds(settings, [other], engine) > LIVE_MAX_S:
            continue
        jobs.append(Job(key, engine, _background_run(settings, other, engine, work)))
    return jobs


def live_note(settings, spec: RunSpec, slot) -> None:
    """Where k cannot be live (a run at the next k is estimated above LIVE_MAX_S, so nothing is
    computed ahead and every move of the slider waits for a run), say so on the page and offer what
    can be: a random subset sized for about LIVE_TARGET_S per k; a GPU where there is none."""
    if spec.machine == "is" or not isinstance(spec.k, int):
        return
    engine = _engine_of(settings, spec.machine)
    kmax = k_limit(spec.machine, tuple(settings.train.shape[1:]), spec.size)
    near = neighbour_ks(spec.k, kmax, 1)
    if not near:
        return
    other = replace(spec, k=near[0])
    seconds = _seconds(settings, [other], engine)
    if seconds <= LIVE_MAX_S:
        return
    n, (c, h, w) = len(settings.train), settings.train.shape
    device = getattr(getattr(engine, "device", None), "type", "cpu")
    text = (f"**k is not live here.** A run at another k takes about {duration(seconds)} on this machine "
            f"({n:,} images of {h}x{w}{', colour' if c == 3 else ''}, on the {device.upper()}), too long to "
            f"compute the neighbouring k ahead: each move of the k slider waits for its run.")
    if device == "cpu":
        text += " On a machine with a CUDA GPU the engine uses it by itself, and such runs take seconds."
    sub = _subset(settings, other, engine, LIVE_TARGET_S)
    box = slot.container()
    box.info(text)
    if sub is not None:
        box.button(f"Make k live: use a random subset of {sub[0]:,} images (about {duration(sub[1])} per k)",
                   key="live_subset", on_click=_use_subset, args=(sub[0],))


def duration(seconds: float) -> str:
    """'40 s', '3 min' (rounded as an estimate is)."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _background_run(settings, spec, engine, work):
    def go(check):
        key = (settings.dataset_key, spec)
        if runs_cache().get(key) is not None:  # run in the foreground meanwhile
            return
        total, done = spec.steps - 1, []

        def callback(frame):
            done.append(frame.i)
            check(len(done), total)

        traj, took = _timed_run(engine, work, lambda cb: run(engine, spec, cb), StepClock(callback))
        runs_cache().put(key, Result(settings.dataset_key, settings.train, engine, spec, traj, took, background=True))

    return go


def compute_ahead(settings) -> None:
    """Compute the settings' run in the background, into the run cache, before anyone asks for it (a new
    server's head start, elsviz/ui/warm.py); a page that asks meanwhile waits for it (spec_run)."""
    spec, engine = settings.spec, settings.engine
    job = Job((settings.dataset_key, spec), engine, _background_run(settings, spec, engine, _workload(settings, spec, engine)))
    _worker().submit([job], "head start")


def _settings_changed(settings) -> None:
    """Stop background work for other settings at once (before this rerun's own run)."""
    ss = st.session_state
    base = _live_base(settings, settings.spec)
    if ss.get("_live_base") != base:
        _worker().cancel(_session())  # the settings changed: this session's old neighbours are not wanted
    ss["_live_base"] = base


def start_live_k() -> None:
    """Start the background runs noted by this rerun's page (app.py calls it after the page ran, so
    they never slow the page down)."""
    pending = st.session_state.pop("_live_next", None)
    if pending is None:
        return
    settings, spec, slot = pending
    try:
        jobs = live_plan(settings, spec)
        live_note(settings, spec, slot)
    except ElsvizError:
        jobs = []
    _worker().submit(jobs, _session())


def main_result() -> Result:
    """The sidebar's run for the page; on an error the message and the previous good result.

    Stops the page when there is nothing to show yet.
    """
    s = settings()
    _settings_changed(s)
    try:
        result = spec_run(s)
    except ElsvizError as err:
        st.error(str(err))
        result = st.session_state.get("_last_result")
        if result is not None:
            st.info(f"Showing the previous result ({result.spec.describe()}).")
    else:
        if result is not None:  # its neighbours, after the page (start_live_k)
            st.session_state["_live_next"] = (s, s.spec, st.empty())  # (the place of live_note)
    if result is None:
        st.stop()
    ss = st.session_state
    if ss.get("_last_result") is not None and ss["_last_result"] is not result:
        ss["_previous_result"] = ss["_last_result"]  # the locality explorer shows it beside the new one
    ss["_last_result"] = result
    return result
def previous_result() -> Result | None:
    """The result shown before the current one (another k, seed, machine ...), if any."""
    return st.session_state.get("_previous_result")


def branch_run(result: Result, at_step: int, k) -> Result:
    """result's run kept down to step at_step + 1, then finished with another k (cached), with a
    progress bar that says how long is left; timed like every run. One place on the page (status_slot)."""
    slot = status_slot()

    def make():
        spec = replace(result.spec, k=k)
        ks = run_ks(spec, from_step=at_step)  # a bad k fails here
        work = _workload(result, spec, result.engine)
        traj, took = _run_with_progress(result.engine, work, ks, run_ts(spec, from_step=at_step),
                                        f"Branch at step {at_step} with k = {k}",
                                        lambda cb: branch(result.traj, at_step=at_step, k=k, callback=cb), slot)
        return Result(result.dataset_key, result.train, result.engine, result.spec, traj, took)

    return runs_cache().fetch((result.dataset_key, result.spec, "branch", at_step, k), make)


def explain(result: Result, step: int, pixel: tuple[int, int], top: int = 8) -> list[dict]:
    """The top keys of one pixel at one step of the result's run (engine.explain), cached."""
    frame = result.traj.frame(step)

    def make():
        with engine_use(result.engine):
            return result.engine.explain(frame.x, frame.t, frame.k, pixel=pixel, top=top, label=result.spec.label)

    return runs_cache().fetch((result.dataset_key, result.spec, "explain", step, pixel, top), make)


def derived(result: Result, name: str, make):
    """make() for something drawn from a result (a figure, a GIF), computed once per (result, name).

    name must tell apart what a result's spec does not (e.g. the step and k of a branch).
    """
    return runs_cache().fetch((result.dataset_key, result.spec, "derived", name), make)


def derived_later(result: Result, name: str, make):
    """derived(result, name, make) as a function to call later: a download button's data, made when it is clicked.

    st.download_button runs it on another thread, after the page has run; the cache it fills is the
    page's, taken now, so the next click (or a later visit to the same run) gets the same bytes at once.
    """
    runs, key = runs_cache(), (result.dataset_key, result.spec, "derived", name)
    return lambda: runs.fetch(key, make)


def estimate_seconds(settings, specs) -> float:
    """About how long the uncached runs among specs will take, one after the other (runs.Estimator)."""
    todo = []
    for s in specs:
        try:
            run_ks(s)
        except ElsvizError:  # a refused k: its run says why, and costs nothing
            continue
        if runs_cache().get((settings.dataset_key, s)) is None:
            todo.append(s)
    by_machine: dict = {}
    for s in todo:
        by_machine.setdefault((s.machine, s.size, s.label), []).append(s)
    return sum(_seconds(settings, group, _engine_of(settings, group[0].machine)) for group in by_machine.values())
