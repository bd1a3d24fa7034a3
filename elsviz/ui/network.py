"""The Streamlit side of "Network vs machine": which networks there are, loading them (cached),
training and calibrating them with a progress bar, and their runs (cached beside the machines').

A network's runs are cached per (checkpoint, weights, seed, steps); the machines' runs go through
ui.runs.spec_run, so the same bbELS run is shared with the other pages.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import streamlit as st

from ..analysis.compare import Comparison, calibration, resample, score
from ..datasets import load_dataset
from ..errors import ElsvizError
from ..networks import CONFIG, SCHEDULE, load_network, network_for, save_schedule, train_network
from ..app.runs import RunSpec
from ..machines import k_limit
from ..schedule import PRESET_NOTES, PRESETS
from ..sampling import sample
from . import data
from .runs import runs_cache, engine_use, estimate_seconds, spec_run
from .links import CALIBRATED, SCHEDULE_MODES, SIDEBAR  # noqa: F401 (the page reads them here)
from .sidebar import PRESET, Settings

MACHINES = ("bbels", "els", "is")  # the grid's machines (LS is in `elsviz compare`)


# -- which networks ---------------------------------------------------------------------------------
def _stamp(folder: Path) -> tuple:
    """Changes whenever the checkpoint or its calibration is rewritten."""
    return tuple((folder / f).stat().st_mtime_ns if (folder / f).exists() else 0 for f in (CONFIG, SCHEDULE))


@st.cache_resource(max_entries=8, show_spinner="Loading the network ...")
def _load(path: str, stamp: tuple):
    return load_network(path)


def network(folder) -> object:
    """The Network in a folder (cached until its files change); ElsvizError when it is not one."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ElsvizError(f"{folder} does not exist on this machine (it is read by the app's server).")
    return _load(str(folder.resolve()), _stamp(folder))


def choose(networks: dict, options: list[str], set_name: str, shape=None) -> None:
    """Set the page's choice (st.session_state["net_choice"]) to the network trained on the sidebar's set
    (networks.network_for), on the first visit and whenever the set changes while the choice is still the
    page's own; a network the user or a link chose stays. Without one for the set: the first option."""
    ss = st.session_state
    # the same images at the same size: a network of another size would run the machines on its own set, e.g.
    # mnist-resnet's 5,000 digits at 28x28, minutes per seed on a CPU beside the app's 1,000 at 16x16
    auto = network_for(set_name, networks, shape)
    mine = ss.get("net_choice") not in options or ss.get("net_choice") == ss.get("_net_auto")
    if mine:
        ss["net_choice"] = auto or options[0]
        ss["_net_auto"] = ss["net_choice"]


def set_sentence(net, sidebar) -> str | None:
    """One sentence when the network was trained on another set than the sidebar's (another name, size or
    number of images): the machines here use the network's own. None when the two are the same."""
    c, h, w = net.train.shape
    if (sidebar.name, tuple(sidebar.shape), len(sidebar)) == (net.train.name, (c, h, w), net.train.n):
        return None
    _, sh, sw = sidebar.shape
    return (f"The machines here run on the network's own training set, {net.train.name} at {h}x{w} "
            f"({net.train.n:,} images), not on the sidebar's {sidebar.name} at {sh}x{sw} ({len(sidebar):,} images).")


@st.cache_resource(max_entries=4, show_spinner="Loading the network's training set ...")
def _set(source: str, options: str):
    return load_dataset(source, **json.loads(options))


def training_set(net) -> tuple[tuple, object]:
    """(dataset key, ImageSet) of the set the network was trained on, shared with the sidebar's cache when it can be."""
    source, opts = net.train.source, dict(net.train.options)
    if source in data.builtin_names() and set(opts) <= {"size", "limit", "seed"} and opts.get("seed", 0) == 0:
        key, train = data.builtin(source, opts.get("size"), opts.get("limit"))
    else:
        options = json.dumps(opts, sort_keys=True)
        key, train = ("network-set", source, options), _set(source, options)
    if tuple(train.shape) != tuple(net.train.shape) or len(train) != net.train.n:
        raise ElsvizError(f"{source} now holds {len(train):,} images of {train.shape}, but the network was trained on "
                          f"{net.train.n:,} of {net.train.shape}: it has changed since.")
    return key, train


def source_of(dataset_key) -> tuple[str, dict] | None:
    """(source, options) that load_dataset can read again, for a sidebar dataset key; None for an upload.

    The app's subsets are drawn with load_dataset's default seed (0), so the seed is left out.
    """
    if dataset_key[0] == "builtin":
        _, name, size, limit, *extra = dataset_key  # extra: (("fingers", counts),) for mixed hands
        opts = {k: v for k, v in (("size", size), ("limit", limit)) if v}
        return name, {**opts, **{k: list(v) for k, v in (extra[0] if extra else ())}}
    if dataset_key[0] == "path":
        _, path, _, size, limit = dataset_key
        return path, {k: v for k, v in (("size", size), ("limit", limit)) if v}
    return None


# -- which schedule the machines use ------------------------------------------------------------------
def sidebar_locality(spec) -> tuple[str, str, str | None]:
    """The sidebar's locality as (name, kind, fitted to): kind "preset" (a paper schedule by name), "calibrated"
    (a network's calibrated schedule; fitted to: that network's folder name), "k" (one k), "table" (k per step
    typed in), "is" (no window)."""
    ss = st.session_state
    if spec.machine == "is":
        return "no window (IS)", "is", None
    if isinstance(spec.k, str):
        return spec.k, "preset", None
    if isinstance(spec.k, tuple):
        preset = str(ss.get("preset", ""))
        if ss.get("loc_mode") == PRESET and preset in PRESETS:
            return preset, "preset", None  # clamped to what the machine takes here: still the paper's fit
        if ss.get("loc_mode") == PRESET and preset.startswith("calibrated: "):
            return preset, "calibrated", preset.removeprefix("calibrated: ")
        return "k per step (the sidebar's table)", "table", None
    return f"k = {spec.k}", "k", None


def locality_note(kind: str, name: str, source: str | None, net, has_calibrated: bool) -> str | None:
    """What a schedule the machines use was fitted to, when it was not fitted to this network (None when it was)."""
    this = net.path.name
    fit = ("Choose **calibrated for this network** above for the schedule fitted to it" if has_calibrated else
           f"Calibrate it (the button above, or `elsviz calibrate {net.path}`) for a schedule fitted to it")
    if kind == "preset":
        return (f"**{name}** is the schedule the paper fitted to its own network ({PRESET_NOTES.get(name, name)}, "
                f"32x32 images), not to {this}: the agreement below says how well bbELS matches {this} with the "
                f"windows fitted to another network, not with its own. {fit}.")
    if kind == "calibrated" and source != this:
        return (f"**{name}** was fitted to the network {source}, not to {this}: the agreement below says how well "
                f"bbELS matches {this} with the windows fitted to another network, not with its own. {fit}.")
    if kind in ("k", "table"):
        return f"The sidebar's {name} is not fitted to any network. {fit}."
    return None


# -- training and calibrating in the app -------------------------------------------------------------
def _clear_request() -> None:
    st.session_state.pop("_net_train", None)


def request_training(**request) -> None:
    st.session_state["_net_train"] = request


def train_pending(settings) -> Path | None:
    """Train as requested (a button set the request), showing progress and a Stop button.

    Returns the folder when training finished; on Stop (or leaving the page) the checkpoint of
    the last step is kept and can be resumed. The request is gone either way.
    """
    req = st.session_state.get("_net_train")
    if not req:
        return None
    folder = Path(req["folder"])
    st.button("Stop training (the checkpoint is kept; resume it later)", on_click=_clear_request, key="net_stop")
    bar = st.progress(0.0, text="Training: starting ...")

    def progress(p):
        bar.progress(min(p.step / p.steps, 1.0), text=f"Training: {p.describe()}")

    try:
        if req.get("resume"):
            key, images = training_set(network(folder))
        else:
            key, images = settings.dataset_key, settings.train
        source, options = source_of(key) or (None, None)
        train_network(images, folder, arch=req.get("arch", "resnet"), steps=int(req["steps"]),
                      resume=bool(req.get("resume")), source=source, options=options, progress=progress,
                      report_every=5, threads="auto")
    finally:
        _clear_request()
        bar.empty()
    return folder


def calibrate_here(net, engine, seeds: list[int], steps: int = 20) -> None:
    """Calibrate with a progress bar and save the schedule beside the network."""
    bar = st.progress(0.0, text="Calibrating: starting ...")
    start = time.perf_counter()

    def progress(done, total):
        bar.progress(done / total, text=f"Calibrating {engine.machine}: step {done} of {total}, "
                                        f"{time.perf_counter() - start:.0f} s")

    try:
        with engine_use(engine):  # one thread at a time on an engine; background runs wait
            cal = calibration(net, engine, seeds, steps, progress=progress)
    finally:
        bar.empty()
    save_schedule(net, cal.to_json())


# -- runs ---------------------------------------------------------------------------------------------
def network_run(net, seed: int, steps: int, label=None):
    """sample(net, seed=seed, steps=steps), cached per checkpoint, weights and parameters."""
    key = ("network", str(net.path), net.config["weights_sha256"], seed, steps, label)
    return runs_cache().fetch(key, lambda: sample(net, seed=seed, steps=steps, label=label))


def machine_specs(ks, seeds, train_hw, steps: int = 20, label=None) -> list[RunSpec]:
    """bbELS, ELS and IS for every seed; ELS's k clamped to what fits inside the training images."""
    lim = k_limit("els", tuple(train_hw))

    def k_of(m):
        return 5 if m == "is" else tuple(min(k, lim) for k in ks) if m == "els" else tuple(ks)

    return [RunSpec(machine=m, k=k_of(m), steps=steps, seed=s, label=label) for s in seeds for m in MACHINES]


def comparison(net, dataset_key, train, seeds: list[int], ks, network_steps=(20, 150), *, auto_s: float = 8.0,
               label=None) -> Comparison | None:
    """The network and bbELS, ELS, IS for every seed (20 steps, schedule ks); None while a long run waits
    for its button."""
    engine = data.engine(dataset_key, "bbels", train)
    settings = Settings(dataset_key, train, engine, RunSpec(k=tuple(ks)))
    specs = machine_specs(ks, seeds, train.shape[1:], label=label)
    todo = estimate_seconds(settings, specs)
    slot = st.empty()
    if todo > auto_s and not slot.button(f"Run the machines on {len(seeds)} seeds (about {todo:.0f} s)", key="net_go"):
        st.caption("The machines' runs are not computed yet.")
        return None
    slot.empty()
    runs = {}
    for spec in specs:
        what = f"{spec.describe()}".replace(f", {spec.steps} steps", "")
        runs[(spec.machine, spec.seed)] = spec_run(settings, spec, what=what, confirm=False).traj
    outputs, means = {}, {}
    for n in sorted(set(network_steps) | {20}):
        name = Comparison.network_key(n, 20)
        trajs = [network_run(net, s, n, label) for s in seeds]
        outputs[name] = _stack([t.final for t in trajs])
        if n == 20:
            means[name] = {f.i: _stack([t.frame(f.i).mean for t in trajs]) for f in trajs[0].frames}
    for m in MACHINES:
        trajs = [runs[(m, s)] for s in seeds]
        outputs[m] = _stack([t.final for t in trajs])
        means[m] = {f.i: _stack([t.frame(f.i).mean for t in trajs]) for f in trajs[0].frames}
    return score(seeds, 20, resample(ks, 20), sorted(set(network_steps) | {20}), outputs, means, label,
                 train=train)


def _stack(tensors):
    import torch

    return torch.cat([t.detach().cpu() for t in tensors])


def saved_comparison(net) -> dict | None:
    """What `elsviz compare` saved beside the network (compare.json), if it is for these weights."""
    file = Path(net.path) / "compare.json"
    try:
        saved = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("weights_sha256") not in (None, net.config["weights_sha256"]):
        return None
    return saved
