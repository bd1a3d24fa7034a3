"""Runs for the pages: cached per parameter set, with a progress bar while they compute.

A run that fails (a k the machine refuses, say) shows its message and the last good result stays
on the page. A run that would take long says so first and offers a subset of the training set.
"""
from __future__ import annotations

import streamlit as st

from ..errors import ElsvizError
from ..runs import Result, RunCache, RunSpec, Throughput, run, run_cost, subset_size, timed
from ..sampling import branch
from . import data
from .sidebar import settings

LONG_S = 20.0  # ask before starting a run estimated to take longer than this
SUBSET_TARGET_S = 4.0  # the subset offered instead aims at about this


@st.cache_resource(show_spinner=False)
def _runs() -> RunCache:
    return RunCache(maxsize=256)


@st.cache_resource(show_spinner=False)
def _throughput() -> Throughput:
    return Throughput()


def _progress(spec: RunSpec, what: str):
    bar = st.progress(0.0, text=f"{what}: starting ...")
    total = spec.steps - 1

    def callback(frame):
        done = spec.steps - frame.i
        bar.progress(min(done / total, 1.0), text=f"{what}: step {frame.i} (t = {frame.t:.2f}, k = {frame.k}), "
                                                  f"{done} of {total}")

    return bar, callback


def _use_subset(n: int) -> None:
    st.session_state["limit"] = n


def spec_run(settings, spec: RunSpec | None = None, *, what: str | None = None, confirm: bool = True) -> Result | None:
    """The Result of `spec` (default: the sidebar's) on the sidebar's training set, cached.

    Raises ElsvizError for a run the machine refuses. Returns None while a long run waits for the
    user to confirm it (a message with a button is on the page).
    """
    spec = spec or settings.spec
    key = (settings.dataset_key, spec)
    cache = _runs()
    hit = cache.get(key)
    if hit is not None:
        return hit
    if settings.engine.machine != spec.machine:
        engine = data.engine(settings.dataset_key, spec.machine, settings.train)
    else:
        engine = settings.engine
    spec.schedule()  # a bad k fails here, before any work
    what = what or spec.describe()
    cost = run_cost(len(settings.train), settings.train.shape, spec)
    estimate = _throughput().seconds(cost)
    confirmed = st.session_state.setdefault("_confirmed_runs", set())
    if confirm and estimate > LONG_S and key not in confirmed:
        n = len(settings.train)
        sub = subset_size(n, estimate, SUBSET_TARGET_S)
        st.warning(f"{what} on {n:,} training images will take about {estimate:.0f} s.")
        cols = st.columns(2)
        cols[0].button(f"Run it anyway (about {estimate:.0f} s)", key=f"go_{hash(key)}",
                       on_click=confirmed.add, args=(key,))
        cols[1].button(f"Use a random subset of {sub:,} images (about {SUBSET_TARGET_S:.0f} s)",
                       key=f"sub_{hash(key)}", on_click=_use_subset, args=(sub,))
        return None
    bar, callback = _progress(spec, what)
    try:
        traj, seconds = timed(run, engine, spec, callback)
    finally:
        bar.empty()
    _throughput().record(cost, seconds)
    result = Result(settings.dataset_key, settings.train, engine, spec, traj, seconds)
    cache.put(key, result)
    return result


def main_result() -> Result:
    """The sidebar's run for the page; on an error the message and the previous good result.

    Stops the page when there is nothing to show yet.
    """
    s = settings()
    try:
        result = spec_run(s)
    except ElsvizError as err:
        st.error(str(err))
        result = st.session_state.get("_last_result")
        if result is not None:
            st.info(f"Showing the previous result ({result.spec.describe()}).")
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
    """result's run kept down to step at_step + 1, then finished with another k (cached)."""

    def make():
        bar, callback = _progress(RunSpec(steps=at_step + 1), f"Branch at step {at_step} with k = {k}")
        try:
            traj, seconds = timed(branch, result.traj, at_step=at_step, k=k, callback=callback)
        finally:
            bar.empty()
        return Result(result.dataset_key, result.train, result.engine, result.spec, traj, seconds)

    return _runs().fetch((result.dataset_key, result.spec, "branch", at_step, k), make)


def explain(result: Result, step: int, pixel: tuple[int, int], top: int = 8) -> list[dict]:
    """The top keys of one pixel at one step of the result's run (engine.explain), cached."""
    frame = result.traj.frame(step)
    return _runs().fetch((result.dataset_key, result.spec, "explain", step, pixel, top),
                         lambda: result.engine.explain(frame.x, frame.t, frame.k, pixel=pixel, top=top,
                                                       label=result.spec.label))


def derived(result: Result, name: str, make):
    """make() for something drawn from a result (a figure, a GIF), computed once per (result, name).

    name must tell apart what a result's spec does not (e.g. the step and k of a branch).
    """
    return _runs().fetch((result.dataset_key, result.spec, "derived", name), make)


def estimate_seconds(settings, specs) -> float:
    """About how long the uncached runs among specs will take, from the runs timed so far."""
    cache = _runs()
    todo = [s for s in specs if cache.get((settings.dataset_key, s)) is None]
    return sum(_throughput().seconds(run_cost(len(settings.train), settings.train.shape, s)) for s in todo)
