"""The Streamlit side of "Theories side by side" (app_pages/theories.py) and the lesson's section on
three theories (lesson_theories): which network and set, the runs (cached, with a time estimate and the
question before a long one), the clicked pixel. The logic is elsviz.app.theories'.

Kamb & Ganguli's four machines run through ui.runs.spec_run, so their runs are shared with the other
pages (and teach the estimator its pace); the five rival theories run here, under the same run cache,
with their own measured costs (app.theories.THEORY_COSTS): the engine's cost model covers the four.
"""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st
import torch

from .. import export, figures
from ..analysis import claims
from ..analysis.compare import on_network_path
from ..analysis.lesson import LESSON_K
from ..app import theories as th
from ..app.runs import Result, RunSpec, StepClock, left_text, needs_confirmation, run, run_ks, run_ts, workload
from ..engine import Engine
from ..errors import ElsvizError
from ..machines import MACHINE_NAMES, PAPER_MACHINES
from ..networks import BUNDLED, catalogue, network_for
from . import data
from . import network as nets
from .draw import show
from .runs import duration, engine_use, estimate_seconds, estimator, runs_cache, spec_run, status_slot
from .sidebar import Settings

BASIS = ("Kamb & Ganguli's four machines from the work they imply (the engine's cost model), the five rival "
         "theories and the network from a cost per step measured on this project's CPU, both at the pace of "
         "the runs on this machine so far")


@dataclass(frozen=True)
class View:
    """What the page runs on: the settings of the set the machines use, the network and a sentence saying which."""

    settings: Settings
    net: object  # elsviz.networks.Network
    label: str  # the network's name in the catalogue
    matched: bool  # trained on the sidebar's set (else: the bundled digits ResNet on the digits)
    sentence: str


def view(s: Settings) -> View:
    """The network trained on the sidebar's set (by its name and image shape) with the sidebar's set, or
    the bundled digits ResNet with the digits; ElsvizError when neither can be had."""
    c, h, w = s.train.shape
    label = network_for(s.train.name, catalogue(), s.train.shape)
    if label is not None:
        net = nets.network(catalogue()[label])
        n = net.train.n
        return View(s, net, label, True,
                    f"The network is **{label}**, {net.describe()}: trained on {s.train.name} at {h}x{w} "
                    f"({n:,} images), the sidebar's set, whose {len(s.train):,} images the machines use.")
    folder = BUNDLED / th.FALLBACK_NETWORK
    net = nets.network(folder)
    key, train = nets.training_set(net)
    settings = Settings(key, train, data.engine(key, "bbels", train), s.spec)
    _, nh, nw = train.shape
    return View(settings, net, f"{th.FALLBACK_NETWORK} (bundled)", False,
                f"No network here was trained on {s.train.name} at {h}x{w}, so this page runs on the "
                f"**{train.name}** ({len(train):,} images of {nh}x{nw}) with the bundled network "
                f"**{th.FALLBACK_NETWORK}**, {net.describe()}, which was trained on them.")


@st.cache_resource(max_entries=10, show_spinner="Building the engine ...")
def _theory_engine(dataset_key, machine: str, _train):
    """A rival theory's engine (kept apart from ui.data's, which hold Kamb & Ganguli's four and their tables)."""
    return Engine(_train, machine=machine, device="auto")


def _engine(s: Settings, machine: str):
    if machine in PAPER_MACHINES:
        return s.engine if s.engine.machine == machine else data.engine(s.dataset_key, machine, s.train)
    return _theory_engine(s.dataset_key, machine, s.train)


def _sha(v: View) -> str:
    return v.net.config["weights_sha256"]


def _on_key(v: View, spec: RunSpec) -> tuple:
    return (v.settings.dataset_key, spec, "on-network", _sha(v))


def estimate(v: View, specs: dict[str, RunSpec]) -> float:
    """Seconds the runs not cached yet will take: each machine's own run and its means on the network's
    x_t (the same steps again, its tables then built), and the network's run."""
    s, cache, est = v.settings, runs_cache(), estimator()
    total = 0.0
    shape, n = tuple(s.train.shape), len(s.train)
    for m, spec in specs.items():
        own = cache.get((s.dataset_key, spec)) is None
        on = cache.get(_on_key(v, spec)) is None
        if not (own or on):
            continue
        ks, ts = run_ks(spec), run_ts(spec)
        engine = _engine(s, m)
        w = workload(engine, s.dataset_key, m, None, None, s.train.name)
        if m in PAPER_MACHINES:
            if own:
                total += estimate_seconds(s, [spec])
            if on:
                total += est.seconds(w, ks + ks if own else ks, ts + ts if own else ts, engine) - \
                    (est.seconds(w, ks, ts, engine) if own else 0.0)  # the second pass, its tables built
        else:
            one = th.theory_seconds(m, n, shape, ks, getattr(engine, "options", {}))
            total += (own + on) * one * est.pace(w)
    first = next(iter(specs.values()))  # (all share the seed and the steps)
    if cache.get(("network", str(v.net.path), _sha(v), first.seed, first.steps, None)) is None:  # nets.network_run's
        w = workload(s.engine, s.dataset_key, s.engine.machine, None, None, s.train.name)
        total += th.network_seconds(v.net.n_parameters(), shape, first.steps) * est.pace(w)
    return total


def _bar(slot, what: str, total: int):
    bar = slot.progress(0.0, text=f"{what}: starting ...")
    done = [0]

    def tick(frame, elapsed):
        done[0] += 1
        left = left_text(elapsed / done[0] * (total - done[0]))
        bar.progress(min(done[0] / max(total, 1), 1.0),
                     text=f"{what}: step {frame.i} (t = {frame.t:.2f}), {done[0]} of {total}"
                          + (f", {left}" if left else ""))

    return bar, tick


def _theory_own(s: Settings, spec: RunSpec, slot) -> Result:
    """A rival theory's own run, cached under the same key as any run of the app."""
    key = (s.dataset_key, spec)
    hit = runs_cache().get(key)
    if hit is not None:
        return hit
    engine = _engine(s, spec.machine)
    bar, tick = _bar(slot, f"{MACHINE_NAMES[spec.machine]}, its own run", spec.steps - 1)
    try:
        with engine_use(engine):
            clock = StepClock(lambda frame: tick(frame, clock.elapsed))
            traj = run(engine, spec, clock)
    finally:
        bar.empty()
    result = Result(s.dataset_key, s.train, engine, spec, traj, clock.elapsed)
    runs_cache().put(key, result)
    return result


def _means_on_network(v: View, spec: RunSpec, engine, net_run, slot) -> dict:
    """The machine's posterior means on the network's x_t at every step (mode "network"), cached."""
    key = _on_key(v, spec)
    hit = runs_cache().get(key)
    if hit is not None:
        return hit
    bar, tick = _bar(slot, f"{MACHINE_NAMES[spec.machine]} on the network's x_t", spec.steps - 1)
    ks = spec.schedule()
    try:
        with engine_use(engine):
            clock = StepClock(lambda frame: tick(frame, clock.elapsed))
            means = on_network_path(engine, net_run, ks, callback=clock)
    finally:
        bar.empty()
    if spec.machine in PAPER_MACHINES:  # the same work as a run of these steps: it teaches the pace too
        s = v.settings
        estimator().record(workload(engine, s.dataset_key, spec.machine, None, None, s.train.name), clock.steps, engine)
    runs_cache().put(key, means)
    return means


def theory_run(v: View, machines: list[str], seed: int, *, ask: bool = True) -> th.TheoryRun | None:
    """The network and the machines from the noise of `seed` (the sidebar's k and steps), with the means of
    both modes; cached. None while a run estimated above runs.ASK_S waits for its button (on the page)."""
    s = v.settings
    specs = th.specs(machines, s.spec.k, s.spec.steps, seed, s.train.shape[1:])
    key = (s.dataset_key, "theories", _sha(v), tuple(specs.values()))
    box = st.container()  # every bar and question of this call in one place (the page's later elements keep theirs)
    hit = runs_cache().get(key)
    if hit is not None:
        return hit
    seconds = estimate(v, specs)
    confirmed = st.session_state.setdefault("_th_confirmed", set())
    if ask and needs_confirmation(seconds) and key not in confirmed:
        box.warning(f"The network and {len(specs)} machine{'s' if len(specs) > 1 else ''} on "
                    f"{len(s.train):,} training images, {s.spec.steps} steps, will take about {duration(seconds)} "
                    f"on this machine ({BASIS}). Fewer machines (above) take less.")
        box.button(f"Run them (about {duration(seconds)})", key=f"th_go_{abs(hash(key))}", type="primary",
                   on_click=confirmed.add, args=(key,))
        return None
    with box:
        net_run = nets.network_run(v.net, seed, s.spec.steps)
        runs, means = {}, {}
        for m, spec in specs.items():
            what = f"{MACHINE_NAMES[m]} ({list(specs).index(m) + 1} of {len(specs)})"
            if m in PAPER_MACHINES:
                result = spec_run(s, spec, what=what, confirm=False)
            else:
                result = _theory_own(s, spec, status_slot())
            runs[m] = result.traj
            means[m] = _means_on_network(v, spec, result.engine, net_run, status_slot())
    out = th.TheoryRun(net_run, runs, means, network_name=v.label)
    runs_cache().put(key, out)
    return out


def component(v: View) -> torch.Tensor:
    """The training set's first principal component (what Wiener shows instead of a source), cached."""
    s = v.settings
    return runs_cache().fetch((s.dataset_key, "principal-component"), lambda: th.principal_component(s.train.images))


def theories_spec(v: View, machines: list[str], seed: int) -> RunSpec:
    """A RunSpec that names the page's runs in a download: machine 'all' (or the machines chosen), the
    sidebar's k and steps, the seed."""
    which = "all" if list(machines) == list(th.MACHINES) else "-".join(machines)
    return RunSpec(machine=which, k=v.settings.spec.k, steps=v.settings.spec.steps, seed=seed)


# -- the lesson's section -----------------------------------------------------------------------------
LESSON_TITLE = "Three theories, one noise: linear blurs, ideal memorises, local creates"


def _lesson_run(lesson: Settings, machine: str, k, steps: int, seed: int) -> Result:
    spec = RunSpec(machine=machine, k=k, steps=steps, seed=seed)
    what = f"Lesson: {MACHINE_NAMES[machine]}"
    if machine in PAPER_MACHINES:
        return spec_run(lesson, spec, what=what, confirm=False)
    return _theory_own(lesson, spec, status_slot())


def lesson_theories(lesson: Settings, steps: int, seed: int, *, title: str | None = LESSON_TITLE,
                    big: int = 256) -> dict[str, claims.Claim]:
    """The lesson's section: the same noise through Wiener (linear: blurs), IS (ideal: memorises) and bbELS
    and ELS (local: create), each output beside the sentence app.theories.lesson_claims makes of its numbers,
    and a PNG download. lesson: the lesson's settings (its set of digits); the runs are the lesson's own (IS
    and ELS at LESSON_K, bbELS with the mnist-resnet schedule: shared with its other sections). Returns the
    claims shown."""
    if title:
        st.header(title)
    train = lesson.train
    noun = claims.noun(train.name)
    st.markdown(
        "Three kinds of theory of what a diffusion model computes, from the **same starting noise**. A **linear** "
        f"one (Wiener: the training {claims.plural(noun)}' average and how their pixels vary together) can only "
        "blur; the **ideal** one (IS, the exact answer for this training set) can only give a training "
        f"{noun} back; **local** ones (bbELS, ELS: each pixel sees a small window) paste patches into something new.")
    results = {"wiener": _lesson_run(lesson, "wiener", th.NO_WINDOW_K, steps, seed),
               "is": _lesson_run(lesson, "is", LESSON_K, steps, seed),
               "bbels": _lesson_run(lesson, "bbels", "mnist-resnet", steps, seed),
               "els": _lesson_run(lesson, "els", LESSON_K, steps, seed)}
    outputs = {m: r.traj.final[0].detach().cpu() for m, r in results.items()}
    said = runs_cache().fetch((lesson.dataset_key, "lesson-theories", steps, seed),
                              lambda: th.lesson_claims(train.images, outputs, noun=noun))
    short = {"wiener": "linear: blurs", "is": "ideal: memorises", "bbels": "local: creates", "els": "local: creates"}

    def caption(m):
        c = said[m]
        if m == "is":
            return f"IS: a copy of #{c.numbers['nearest']}" if c.kind == "memorises" else "IS: not settled"
        if m == "wiener":
            return "Wiener: " + ("blurs" if c.kind == "blurs" else "no blurrier")
        return f"{MACHINE_NAMES[m]}: " + ("new" if c.kind == "creates" else f"a copy of #{c.numbers['nearest']}")

    pic = runs_cache().fetch((lesson.dataset_key, "lesson-theories-png", steps, seed), lambda: figures.strip(
        [outputs[m] for m in results], [caption(m) for m in results], target=big * 3 // 4, font_size=16))
    show(pic)
    st.caption(f"The same noise (seed {seed}, {steps} steps) through four machines: " +
               "; ".join(f"{MACHINE_NAMES[m]} ({short[m]})" for m in results) + ".")
    for m in results:
        st.markdown(said[m].text)
    st.download_button("Download this picture (PNG)", export.png_bytes(pic),
                       file_name=export.download_name("lesson-theories", "png", train=train,
                                                      spec=RunSpec(machine="wiener-is-bbels-els", k="mnist-resnet",
                                                                   steps=steps, seed=seed)),
                       mime="image/png", key="dl_lesson_theories", on_click="ignore")
    return said
