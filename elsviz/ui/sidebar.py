"""The shared sidebar: training set, machine, locality, steps, seed, output size, device.

Drawn once per rerun by app.py before the page runs, so every page sees the same choices; the
choices live in st.session_state under the keys of DEFAULTS and survive page switches and
widgets that are hidden for a while (a k slider while a schedule is chosen).

What the browser needs a large script for waits for the page's first picture: the schedule is
drawn as a small SVG (figures.schedule_svg), not with Plotly (4.7 MB of script), and where a page
shows its first picture first (the lesson, where a first visit lands) "Copy link" (st.code, whose
highlighter is 1.5 MB) keeps its place but is drawn after that picture (draw_later). On the 2-core
machine under load those scripts held the browser's main thread for 3-13 s while the lesson's first
picture waited (docs/BENCHMARKS.md, "The first picture").
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import streamlit as st

from .. import figures
from ..analysis.compare import resample
from ..datasets.fetch import canonical
from ..errors import ElsvizError
from ..networks import calibrated_schedules
from ..machines import k_limit, MACHINE_NAMES, MACHINE_SENTENCES, PAPER_MACHINES
from ..app.runs import RunSpec
from ..schedule import PRESET_NOTES, PRESETS, locality_schedule
from . import data
from .links import current_params, link_message, link_size, read_link, write_link

PATH = "a local path ..."
UPLOAD = "upload your own ..."
ONE_K, PRESET, TABLE = "one k", "paper schedule", "per-step table"
ANY = -1  # the "any class" choice (a selectbox shows None as "no choice")

DEFAULTS = {
    # real MNIST handwriting at 16x16, a 1,000-image subset: a digit in a 1-2 s run (data.DEFAULT_SET says more);
    # "resize" and "limit" start from data.app_subset of the set a visit opens on, these of the default
    "dataset": data.DEFAULT_SET, "path": "", "resize": data.app_subset(data.DEFAULT_SET)[0],
    "limit": data.app_subset(data.DEFAULT_SET)[1],
    # the paper's calibrated schedule: it makes digit-like pictures, and quickly (large k early)
    "machine": "bbels", "loc_mode": PRESET, "k": 5, "preset": "mnist-resnet",
    "steps": 20, "seed": 0, "label": ANY, "out_h": 0, "out_w": 0,
    "fingers": [5],  # hands only: the finger counts to mix (load_dataset("hands", fingers=...))
}


@dataclass(frozen=True)
class Settings:
    """What the sidebar chose: the training set (with its cache key), its engine, and the run spec."""

    dataset_key: tuple
    train: object  # ImageSet
    engine: object  # Engine
    spec: RunSpec


def settings() -> Settings:
    """The settings the sidebar made in this rerun."""
    return st.session_state["_settings"]  # (every page runs through app.py's st.navigation, which made them)


def _init_state() -> None:
    ss = st.session_state
    resize, limit = data.app_subset(ss.get("dataset", DEFAULTS["dataset"]))  # a link may open another set
    for key, value in {**DEFAULTS, "resize": resize, "limit": limit}.items():
        ss.setdefault(key, value)
        ss[key] = ss[key]  # keeps the value of a widget that is hidden in this rerun or on another page


def _new_seed() -> None:
    st.session_state["seed"] = random.randrange(1_000_000)


def choose_dataset(name: str, limit: int = 0) -> None:
    """Switch the sidebar to a built-in set and a subset of it (a button's on_click, on any page)."""
    ss = st.session_state
    ss["dataset"] = ss["_choice"] = name  # _choice too: the subset is not reset as for a set picked by hand
    ss["limit"], ss["resize"] = int(limit), data.app_subset(name)[0]


def _dataset():
    """(key, ImageSet): the chosen set, or the last good one (with a message) when it fails to load."""
    ss = st.session_state
    names = data.builtin_names()
    st.selectbox("Training set", [*names, PATH, UPLOAD], key="dataset",
                 format_func=lambda n: f"{n} (after `elsviz fetch {canonical(n)}`)" if data.is_downloadable(n) else n,
                 help="The images whose patches the machine copies. Built-ins need no download.")
    choice = ss["dataset"]
    if ss.get("_choice", choice) != choice:  # another set: its own size and subset
        ss["resize"], ss["limit"] = data.app_subset(choice)
    ss["_choice"] = choice
    size = int(ss["resize"]) or None
    limit = int(ss["limit"]) or None
    try:
        if choice == PATH:
            st.text_input("Path on this machine", key="path",
                          placeholder="/data/mnist or my_images.zip or arrays.npz")
            key, train = data.from_path(ss["path"], size, limit)
        elif choice == UPLOAD:
            files = st.file_uploader("Images, a .zip of them, or an .npz / .npy array", accept_multiple_files=True,
                                     key="upload")
            key, train = data.from_upload(files, size, limit)
        else:
            if choice == "hands":
                st.multiselect("Fingers per hand", [3, 4, 5, 6, 7], key="fingers",
                               help="Hands with these finger counts, mixed (labelled by count); 5 = normal hands.")
            key, train = data.builtin(choice, size, limit, fingers=ss["fingers"] if choice == "hands" else None)
    except ElsvizError as err:
        if choice in (PATH, UPLOAD) and not (ss.get("path") if choice == PATH else ss.get("upload")):
            st.caption(str(err))
        else:
            st.error(str(err))
        key, train = ss.get("_last_dataset") or data.builtin(names[0], *(v or None for v in data.app_subset(names[0])))
        st.caption(f"Still using **{train.name}**.")
    with st.expander("Resize / subset"):
        st.number_input("Resize to (pixels, 0 = keep)", 0, 256, step=1, key="resize",
                        help="Needed when images have different sizes.")
        st.number_input("Use at most this many images (0 = all)", 0, 1_000_000, step=100, key="limit",
                        help="A random subset (seed 0): smaller sets run faster.")
    ss["_last_dataset"] = (key, train)
    c, h, w = train.shape
    labelled = f", labels {len(train.classes)} classes" if train.labels is not None else ""
    st.caption(f"**{train.name}**: {len(train):,} images, {h}x{w}, {'colour' if c == 3 else 'grey'}{labelled}. "
               f"{train.description}")
    if train.source:
        with st.expander("Where the images come from"):
            st.caption(train.source)
    if ss.get("_size_for") != key:  # a new set: reset the choices that depend on it
        ss["_size_for"] = key
        ss["out_h"], ss["out_w"] = h, w
        ss.update(link_size())  # a shared link's output size (once)
        if ss["label"] not in train.classes:
            ss["label"] = ANY
    if train.labels is not None:
        st.selectbox("Class (conditional generation)", [ANY, *train.classes], key="label",
                     format_func=lambda v: "any class" if v == ANY else train.class_name(v),
                     help="Only training images of this class are used as keys.")
    else:
        ss["label"] = ANY
    return key, train


def _locality(machine: str, train_hw, out_hw, steps: int):
    """The k argument of the run: an int, a preset name, or a tuple of `steps` ints."""
    ss = st.session_state
    if machine == "is":
        st.caption("IS compares whole images: it has no window, so k plays no part.")
        return int(ss["k"])
    kmax = k_limit(machine, train_hw, out_hw)
    st.radio("Locality", [ONE_K, PRESET, TABLE], key="loc_mode", horizontal=True,
             help="k is the side of the square window each pixel sees. Large noise, large windows.")
    mode = ss["loc_mode"]
    if mode == ONE_K:
        k = min(max(1, int(ss["k"])), kmax)
        ss["k"] = k if k % 2 else k - 1
        st.slider("k (window size)", 1, kmax, step=2, key="k",
                  help=f"Odd window sizes; up to {kmax} for {MACHINE_NAMES[machine]} here.")
        return int(ss["k"])
    if mode == PRESET:
        calibrated = calibrated_schedules()  # fitted to the networks of the "Network vs machine" page
        if ss["preset"] not in PRESETS and ss["preset"] not in calibrated:
            ss["preset"] = DEFAULTS["preset"]
        st.selectbox("Schedule (fitted by the paper to trained networks)", [*PRESETS, *calibrated], key="preset",
                     format_func=lambda p: f"{p} ({PRESET_NOTES.get(p) or calibrated[p][1]})")
        ks = _preset_ks(ss["preset"], steps)
        spec_k = ss["preset"] if ss["preset"] in PRESETS else tuple(ks)
        if max(ks[1:]) > kmax:
            ks = [min(v, kmax) for v in ks]
            spec_k = tuple(ks)
            st.warning(f"This schedule was fitted on 32x32 images; its k above {kmax} is clamped to {kmax}, "
                       f"the largest {MACHINE_NAMES[machine]} allows here.")
        st.markdown(figures.schedule_svg(ks), unsafe_allow_html=True)
        return spec_k
    base = ss.get("_k_table")
    if not base or len(base) != steps:
        base = _preset_ks(ss["preset"], steps)
    import pandas as pd  # here: only the per-step table needs it (0.2 s at the app's start)

    frame = pd.DataFrame({"step": list(range(steps - 1, 0, -1)),
                          "t": [round(i / steps, 3) for i in range(steps - 1, 0, -1)],
                          "k": [base[i] for i in range(steps - 1, 0, -1)]})
    edited = st.data_editor(frame, key=f"k_table_{steps}", hide_index=True, disabled=["step", "t"],
                            column_config={"k": st.column_config.NumberColumn("k", min_value=1, step=2,
                                                                              help="an odd window size")})
    ks = [int(v) for v in edited["k"]][::-1]  # steps 1 .. S-1
    ks = [ks[0], *ks]  # k[0] is never used
    ss["_k_table"] = ks
    st.markdown(figures.schedule_svg(ks), unsafe_allow_html=True)
    return tuple(ks)


def draw_later() -> None:
    """Draw what the sidebar left for after the page's first picture ("Copy link"), with the link in the
    browser's URL: the settings and what the page added of its own (write_link put them there). A page
    calls it once its first picture is on the page, app.py after the page (then there is nothing left)."""
    slot = st.session_state.pop("_link_later", None)
    if slot is not None:
        st.session_state["_link_slot"] = slot
        settings_keys = current_params()
        write_link(**{k: v for k, v in st.query_params.to_dict().items() if k not in settings_keys})


def _preset_ks(name: str, steps: int) -> list[int]:
    """k per step of a paper preset or of a network's calibrated schedule (resampled to `steps`)."""
    calibrated = calibrated_schedules()
    return resample(calibrated[name][0], steps) if name in calibrated else locality_schedule(name, steps)


def sidebar(later: bool = False) -> Settings:
    """Draw the shared controls and store the Settings for the page (see settings()). later: the
    page shows its first picture first and calls draw_later() after it (the module says why)."""
    read_link()  # a shared link's choices, before any widget (the session's first run only)
    _init_state()
    ss = st.session_state
    ss.pop("_link_later", None)  # (left by a run that stopped before it drew it)
    with st.sidebar:
        key, train = _dataset()
        c, h, w = train.shape

        st.radio("Machine", list(PAPER_MACHINES), key="machine", horizontal=True, format_func=MACHINE_NAMES.get)
        machine = ss["machine"]
        st.caption(MACHINE_SENTENCES[machine])

        size = None
        if machine in ("els", "bbels"):
            cols = st.columns(2)
            cols[0].number_input("Output height", 4, 256, step=1, key="out_h")
            cols[1].number_input("Output width", 4, 256, step=1, key="out_w")
            if (ss["out_h"], ss["out_w"]) != (h, w):
                size = (int(ss["out_h"]), int(ss["out_w"]))
        out_hw = size or (h, w)

        st.slider("Steps", 2, 50, key="steps", help="Reverse diffusion steps (the paper uses 20).")
        steps = int(ss["steps"])
        k = _locality(machine, (h, w), out_hw, steps)

        cols = st.columns([3, 2], vertical_alignment="bottom")
        cols[0].number_input("Seed", 0, 2**31 - 1, step=1, key="seed", help="The starting noise; same seed, same run.")
        cols[1].button("New seed", on_click=_new_seed)

        spec = RunSpec(machine=machine, k=k, steps=steps, seed=int(ss["seed"]),
                       label=None if ss["label"] == ANY else int(ss["label"]), size=size)
        try:
            eng = data.engine(key, machine, train)
        except ElsvizError as err:
            st.error(str(err))
            st.stop()
        where = getattr(eng, "describe", None)  # the Ray engine says where its shards run
        st.caption(f"Runs on: {where()}" if callable(where) else f"Device: **{eng.device}**")
        link_slot = st.empty()  # "Copy link" (write_link fills it, again when a page adds its own state)
    link_message()
    ss["_link_slot"] = None if later else link_slot
    write_link()  # the URL now, and "Copy link" unless it comes later
    if later:
        ss["_link_later"] = link_slot
    ss["_settings"] = Settings(key, train, eng, spec)
    return ss["_settings"]
