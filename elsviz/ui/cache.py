"""Runs for the pages: cached per parameter set, with a progress bar while they compute.

A run that fails (a k the machine refuses, say) shows its message and the last good result stays
on the page. A run that truly takes long (runs.needs_confirmation: a 32x32 set on a CPU, never the
digits) says so first and offers a subset of the training set. Estimates come from the steps this
server has timed (runs.Estimator, per workload and k), and a running run says how long is left.

Live k: after a run with one k, its neighbouring k are computed in the background (elsviz.app.worker)
into the same run cache, so moving the slider to one of them shows it at once.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import replace

import streamlit as st

from ..errors import ElsvizError
from ..app.worker import Job, Worker
from ..app.runs import Estimator, left_text, needs_confirmation, neighbour_ks, Result, run, run_ks, run_ts, RunCache, RunSpec, step_work, StepClock, subset_offer, time_left, Workload
from ..machines import k_limit
from ..sampling import branch
from . import data
from .sidebar import settings

BASIS = {"measured": "from the runs timed on this set", "carried": "a first guess, from runs on other sets",
         "prior": "a first guess: nothing comparable has run yet"}
LIVE_K = 4  # neighbouring k computed in the background after a run with one k (k + 2, k - 2, k + 4, k - 4)
LIVE_MAX_S = 15.0  # ... only those estimated under this (the 1,000 hands on one core: about 5 s each)


@st.cache_resource(show_spinner=False)
def runs_cache() -> RunCache:
    return RunCache(maxsize=256)


@st.cache_resource(show_spinner=False)
def _estimator() -> Estimator:
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


def _workload(settings, spec: RunSpec, engine):
    """(Workload, step_work) of a spec on the settings' training set."""
    device = getattr(getattr(engine, "device", None), "type", "cpu")
    workload = Workload(settings.dataset_key, spec.machine, device, spec.size, spec.label, settings.train.name)
    return workload, step_work(_n_keys(settings.train, spec.label), settings.train.shape, spec.machine, spec.size)


def _engine_of(settings, machine: str):
    if settings.engine.machine == machine:
        return settings.engine
    return data.engine(settings.dataset_key, machine, settings.train)


def _timed_run(engine, workload, work, go, clock: StepClock):
    """go(clock) (clock: the step callback); every step it completed is recorded, even if it was stopped."""
    try:
        out = go(clock)
    finally:
        _estimator().record(workload, work, clock.steps, engine)
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


def _run_with_progress(engine, workload, work, ks, ts, what, go, slot):
    """go(callback) in the foreground with a progress bar in slot that says how long is left;
    (out, seconds). ks, ts: the k and t of each step it runs."""
    bar, show = _progress(what, _estimator().step_plan(workload, work, ks, engine, ts), slot)
    clock = StepClock(lambda frame: show(frame, clock.elapsed))
    try:
        with engine_use(engine):
            return _timed_run(engine, workload, work, go, clock)
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


def estimate(settings, spec: RunSpec) -> float:
    """About how many seconds spec takes on the settings' set (0 when it is cached)."""
    if runs_cache().get((settings.dataset_key, spec)) is not None:
        return 0.0
    engine = _engine_of(settings, spec.machine)
    workload, work = _workload(settings, spec, engine)
    return _estimator().seconds(workload, work, run_ks(spec), engine, run_ts(spec))


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
    workload, work = _workload(settings, spec, engine)
    seconds = _estimator().seconds(workload, work, ks, engine, run_ts(spec))
    confirmed = st.session_state.setdefault("_confirmed_runs", set())
    basis = _estimator().basis(workload)
    if confirm and needs_confirmation(work, seconds, guess=basis != "measured") and key not in confirmed:
        n = len(settings.train)
        box = slot.container()
        box.warning(f"{what} on {n:,} training images will take about {seconds:.0f} s on this machine "
                    f"({BASIS[basis]}).")
        cols = box.columns(2)
        cols[0].button(f"Run it anyway (about {seconds:.0f} s)", key=f"go_{hash(key)}",
                       on_click=confirmed.add, args=(key,))
        sub = subset_offer(n, seconds)
        if sub is not None:
            part = replace(workload, dataset=(settings.dataset_key, "subset", sub))
            part_work = step_work(_n_keys(settings.train, spec.label) * sub // n, settings.train.shape, spec.machine,
                                  spec.size)
            part_s = _estimator().seconds(part, part_work, ks, None, run_ts(spec))
            cols[1].button(f"Use a random subset of {sub:,} images (about {part_s:.0f} s)",
                           key=f"sub_{hash(key)}", on_click=_use_subset, args=(sub,))
        return None
    traj, took = _run_with_progress(engine, workload, work, ks, run_ts(spec), what, lambda cb: run(engine, spec, cb),
                                    slot)
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
    workload, work = _workload(settings, spec, engine)
    kmax = k_limit(spec.machine, tuple(settings.train.shape[1:]), spec.size)
    jobs = []
    for k in neighbour_ks(spec.k, kmax, LIVE_K):
        other = replace(spec, k=k)
        key = (settings.dataset_key, other)
        if runs_cache().get(key) is not None:
            continue
        if _estimator().seconds(workload, work, run_ks(other), engine, run_ts(other)) > LIVE_MAX_S:
            continue
        jobs.append(Job(key, engine, _background_run(settings, other, engine, workload, work)))
    return jobs


def _background_run(settings, spec, engine, workload, work):
    def go(check):
        key = (settings.dataset_key, spec)
        if runs_cache().get(key) is not None:  # run in the foreground meanwhile
            return
        total, done = spec.steps - 1, []

        def callback(frame):
            done.append(frame.i)
            check(len(done), total)

        traj, took = _timed_run(engine, workload, work, lambda cb: run(engine, spec, cb), StepClock(callback))
        runs_cache().put(key, Result(settings.dataset_key, settings.train, engine, spec, traj, took, background=True))

    return go


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
    try:
        jobs = live_plan(*pending)
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
            st.session_state["_live_next"] = (s, s.spec)
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
        workload, work = _workload(result, spec, result.engine)
        traj, took = _run_with_progress(result.engine, workload, work, ks, run_ts(spec, from_step=at_step),
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
    """About how long the uncached runs among specs will take, from the runs timed so far."""
    return sum(estimate(settings, s) for s in specs)
