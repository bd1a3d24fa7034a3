"""The Streamlit side of "Extra fingers": the hands the page works on (the sidebar's set, thresholded
into silhouettes when it is not, checked to hold hands), the study with a time estimate and a
progress bar, the chosen hand's run and its branch test, all cached.

The single runs go through the app's run cache (ui.runs.spec_run), keyed by the hands' dataset
key, so a hand opened here is the run the other pages show for that seed and k.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import streamlit as st

from .. import export
from ..analysis.fingers import DEFAULT_STUDY, finger_birth, finger_study
from ..app.fingers import STUDY_STEPS, Studied, hand_check, hand_record, silhouette_problem, silhouettes  # noqa: F401 (STUDY_STEPS: the page reads it here)
from ..app.runs import run_ks, run_ts, workload
from . import data
from .runs import runs_cache, engine_use, spec_run
from .sidebar import Settings, choose_dataset


@st.cache_resource(max_entries=4, show_spinner="Thresholding the images into silhouettes ...")
def _silhouettes(dataset_key, threshold, _train):
    return silhouettes(_train, threshold)


@st.cache_data(max_entries=16, show_spinner="Checking that the images are hands ...")
def _check(dataset_key, _images):
    return hand_check(_images)


def hands(s: Settings) -> Settings | None:
    """The sidebar's settings on hand silhouettes, or None with a message (and a way out) on the page.

    A set too small to show fingers is refused (the page offers the hands set); a colour or grey
    set is thresholded into silhouettes (automatically, or at the page's threshold); then a sample
    of the images must read as hands.
    """
    problem = silhouette_problem(s.train)
    if problem and "Resize" in problem:
        st.info(f"This page counts fingers on hand silhouettes. {problem}")
        st.button(f"Use the hands set ({DEFAULT_STUDY.n_train:,} hands, a subset sized for the study)", type="primary",
                  on_click=choose_dataset, args=("hands", DEFAULT_STUDY.n_train), key="fing_use_hands")
        return None
    key, train, engine = s.dataset_key, s.train, s.engine
    if problem:
        auto = st.toggle("Threshold automatically (Otsu's method, per image)", value=True, key="fing_auto",
                         help="The side of the threshold that touches less of the picture's border is the hand.")
        level = None if auto else st.slider("Threshold", -1.0, 1.0, 0.0, 0.05, key="fing_level")
        train = _silhouettes(key, level, s.train)
        key = (*key, "silhouettes", level)
        engine = data.engine(key, s.spec.machine, train)
        st.caption(f"{problem.split(':')[0]}: thresholded into white-on-black silhouettes "
                   f"({'automatic threshold' if level is None else f'threshold {level:+.2f}'}); the machine copies "
                   "patches of these.")
    check = training_check(key, train)
    if not check.usable:
        st.warning(f"These images do not look like hands. {check.describe()} This page needs hand silhouettes "
                   "(a white hand on black, or photos of one hand on a plain background). Upload other images, or "
                   "use the built-in hands.")
        st.button("Use the hands set", on_click=choose_dataset, args=("hands", DEFAULT_STUDY.n_train),
                  key="fing_use_hands_2")
        return None
    return Settings(key, train, engine, s.spec)


def training_check(dataset_key, train):
    """The finger counts of (a sample of) the training images: fingers_view.hand_check, cached."""
    return _check(dataset_key, train.images)


# -- the study ----------------------------------------------------------------------------------------
def _speed_key(hs: Settings, alone: bool = False):
    return (hs.dataset_key, hs.engine.machine, "seconds-per-step", "alone" if alone else "per image in a batch")


def estimate(hs: Settings, n_seeds: int, ks, steps: int) -> float:
    """Seconds the study would take: each k's run of all the seeds as one batch (finger_study), from
    the work it implies at the pace of the runs so far (runs.Estimator), then IS's reference row."""
    from .runs import estimator

    est, ideal = estimator(), replace(hs.spec, machine="is")
    specs = [replace(hs.spec, k=tuple(k) if isinstance(k, list) else k, steps=steps, size=None) for k in ks]
    total = 0.0
    for machine, runs in ((hs.engine.machine, specs), ("is", [replace(ideal, steps=steps)])):
        work = workload(hs.engine, hs.dataset_key, machine, None, hs.spec.label, hs.train.name, batch=n_seeds)
        total += est.seconds(work, [k for r in runs for k in run_ks(r)], [t for r in runs for t in run_ts(r)],
                             hs.engine if machine == hs.engine.machine else None)
    return total


def _study_key(hs: Settings, seeds, ks, steps: int):
    return (hs.dataset_key, hs.engine.machine, tuple(seeds), tuple(ks), steps, hs.spec.label, "finger-study")


def cached_study(hs: Settings, seeds, ks, steps: int) -> Studied | None:
    """The study of these settings if it has run, else None."""
    return runs_cache().get(_study_key(hs, seeds, ks, steps))


def run_study(hs: Settings, seeds, ks, steps: int, slot) -> Studied:
    """finger_study on the hands' engine, and on IS as the reference, with a progress bar in slot
    (status_slot); cached (same settings, same counts). ElsvizError for settings the machine refuses."""
    def make():
        bar = slot.progress(0.0, text="Study: starting ...")
        start = time.perf_counter()

        def progress(done, total, what=""):
            left = (time.perf_counter() - start) / max(done, 1) * (total - done)
            bar.progress(min(done / max(total, 1), 1.0), text=f"Study: {what} ({done} of {total} steps, "
                                                              f"about {left:.0f} s left)")

        try:
            with engine_use(hs.engine):
                study = finger_study(hs.engine, list(seeds), list(ks), steps=steps, label=hs.spec.label,
                                     progress=progress)
            fresh = sum(study.seconds.values())
            if fresh > 1.0:  # a study that ran (not from finger_study's own cache) times the machine
                runs_cache().put(_speed_key(hs), {"per_image_step": fresh / (len(seeds) * (steps - 1) * len(ks)), "per_k": 0.0})
            bar.progress(1.0, text="Study: IS, the reference ...")
            ideal_engine = data.engine(hs.dataset_key, "is", hs.train)
            with engine_use(ideal_engine):
                ideal = finger_study(ideal_engine, list(seeds), [ks[0]], steps=steps, label=hs.spec.label)
        finally:
            bar.empty()
        return Studied(study, ideal)

    return runs_cache().fetch(_study_key(hs, seeds, ks, steps), make)


# -- one hand -----------------------------------------------------------------------------------------
def hand_run(hs: Settings, k, steps: int, seed: int):
    """One hand's run (the sidebar's machine, k, steps, seed) through the app's run cache: the same
    noise as the study's row for that seed."""
    spec = replace(hs.spec, k=k, steps=steps, seed=int(seed), size=None)
    return spec_run(hs, spec, what=f"Seed {seed}, k = {k}", confirm=False)


def _birth_key(result, k_fix, bisect: bool):
    return (result.dataset_key, result.spec, "finger-birth", k_fix, bisect)


def birth_seconds(hs: Settings, steps: int, k_fix: int, bisect: bool) -> float:
    """About how long the branch test takes: a branch from step s runs steps s .. 1 of one image at
    k_fix; every step, or a binary search (from the first and the last step, then about log2(steps)
    branches, from half the steps on average). From the work at the pace of the runs so far."""
    from .runs import estimator

    n = steps - 1
    starts = [n, 1, *[max(1, n // 2)] * math.ceil(math.log2(max(n, 2)))] if bisect else list(range(n, 0, -1))
    ts = [i / steps for s in starts for i in range(s, 0, -1)]
    work = workload(hs.engine, hs.dataset_key, hs.engine.machine, None, hs.spec.label, hs.train.name)
    return estimator().seconds(work, [k_fix] * len(ts), ts, hs.engine)


def cached_birth(result, k_fix, bisect: bool):
    return runs_cache().get(_birth_key(result, k_fix, bisect))


def birth(result, k_fix, bisect: bool, slot):
    """finger_birth of a run (cached per run, larger k and search), with a progress bar in slot (status_slot)."""
    def make():
        bar = slot.progress(0.0, text="Branch test: starting ...")

        def progress(done, total, what=""):
            bar.progress(min(done / max(total, 1), 1.0), text=f"Branch test: {what} ({done} of about {total})")

        try:
            with engine_use(result.engine):
                return finger_birth(result.traj, k=k_fix, bisect=bisect, progress=progress)
        finally:
            bar.empty()

    return runs_cache().fetch(_birth_key(result, k_fix, bisect), make)


# -- what the page says and offers about one hand ---------------------------------------------------------
def sidebar_locality(spec) -> str:
    """The sidebar's locality in words, as a run's caption has it ('schedule mnist-resnet', 'k=5')."""
    return spec.describe().split(", ")[1]


def hand_downloads(result, born, k, train_name: str, sentence: str, picture) -> None:
    """Download buttons for the hand opened: its picture (fingers numbered, the extra one outlined) as PNG, and
    its record (run, fingers, branch test, the sentence) as JSON."""
    traj = result.traj
    name = export.slug(f"{train_name} hand seed {traj.seed} k {k} {traj.steps} steps")
    record = hand_record(traj, born, k=k, train_name=train_name, sentence=sentence)
    row = st.container(horizontal=True)
    row.download_button("Hand (PNG)", export.png_bytes(picture), file_name=f"{name}.png", mime="image/png",
                        key="fing_dl_hand_png", icon=":material/download:", on_click="ignore",
                        help="The hand, each finger in its colour and numbered from the wrist; the extra one outlined.")
    row.download_button("Hand (JSON)", export.json_bytes(record), file_name=f"{name}.json", mime="application/json",
                        key="fing_dl_hand_json", icon=":material/download:", on_click="ignore",
                        help="Seed, k, steps, the fingers counted, the branch test and the sentence above.")
