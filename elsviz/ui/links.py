"""Shareable links: the sidebar's choices and the page's own (step, pixel, view) live in the URL.

On a session's first run, read_link() takes the choices from st.query_params into st.session_state
before any widget is drawn, so opening a link on a fresh server shows the same view; a parameter
that does not parse or no longer fits (a step beyond the run, a machine that does not exist) is
dropped with a message and its default stays. write_link() puts the current choices back into
the URL after every run and shows the whole link to copy in the sidebar.

A link carries only what another computer can reproduce: built-in training sets (not a local
path or an upload) and one k or a schedule (not an edited per-step table).
"""
from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from ..app.fingers import STUDY_STEPS
from ..machines import MACHINE_NAMES, PAPER_MACHINES
from ..schedule import PRESETS
from . import data

LOC = {"k": "one k", "schedule": "paper schedule"}  # URL value -> the sidebar's locality mode
ANY = -1

# the Network vs machine page's choices of schedule, and their names in a link
CALIBRATED, SIDEBAR = "calibrated for this network", "the sidebar's locality"
SCHEDULE_MODES = {"calibrated": CALIBRATED, "sidebar": SIDEBAR}


def _int(lo: int, hi: int, odd: bool = False):
    def parse(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi or (odd and value % 2 == 0):
            raise ValueError
        return value
    return parse


def _choice(options):
    def parse(text: str):
        if text not in options:
            raise ValueError
        return text
    return parse


def _label(text: str) -> int:
    return ANY if text == "any" else _int(0, 10_000)(text)


def _fingers(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",")})
    if not values or not all(3 <= v <= 7 for v in values):
        raise ValueError
    return values


def _preset(text: str) -> str:
    from ..networks import calibrated_schedules  # the networks' schedules are presets too

    if text not in PRESETS and text not in calibrated_schedules():
        raise ValueError
    return text


def _study_ks(text: str) -> str:
    """The finger study's window sizes as typed ("9,13,17" in the URL -> "9 13 17"); the page checks them."""
    entries = text.replace(",", " ").split()
    if not entries or len(text) > 200 or not all(e.replace("-", "").isalnum() for e in entries):
        raise ValueError
    return " ".join(entries)


def _study_steps(text: str) -> int:
    value = int(text)
    if value not in STUDY_STEPS:
        raise ValueError
    return value


def _hand(text: str) -> tuple:
    """A hand of the finger study, "k:seed" ("13:5", "mnist-resnet:5") -> (13, 5); the page checks it is in the study."""
    k, _, seed = text.rpartition(":")
    if not k or not (k.isdigit() or k in PRESETS):
        raise ValueError
    return (_int(1, 255, odd=True)(k) if k.isdigit() else k, _int(0, 2**31 - 1)(seed))


def _network(text: str) -> str:
    """A network of the catalogue, by its label ("digits-resnet (bundled)"); the page checks it is there."""
    if not text.strip() or len(text) > 200:
        raise ValueError
    return text


def _schedule_mode(text: str) -> str:
    return SCHEDULE_MODES[text]


def _machines(text: str) -> list[str]:
    """Theories side by side: the machines shown, "is,els,wiener" -> ["is", "els", "wiener"] (known, no repeats)."""
    keys = [m for m in text.split(",") if m]
    if not keys or len(set(keys)) != len(keys) or not set(keys) <= set(MACHINE_NAMES):
        raise ValueError
    return keys


# URL name -> (session_state key, parser, what it should be, for the message)
PARAMS = {
    "set": ("dataset", lambda t: _choice(data.builtin_names())(t), "a built-in training set"),
    "limit": ("limit", _int(0, 1_000_000), "a number of images"),
    "resize": ("resize", _int(0, 256), "a size in pixels"),
    "fingers": ("fingers", _fingers, "finger counts 3 to 7"),
    "machine": ("machine", _choice(PAPER_MACHINES), "is, ls, els or bbels"),
    "loc": ("loc_mode", lambda t: LOC[_choice(LOC)(t)], "k or schedule"),
    "k": ("k", _int(1, 255, odd=True), "an odd window size"),
    "schedule": ("preset", _preset, "a schedule's name"),
    "steps": ("steps", _int(2, 50), "2 to 50"),
    "seed": ("seed", _int(0, 2**31 - 1), "a whole number"),
    "label": ("label", _label, "a class or any"),
    "h": ("out_h", _int(4, 256), "an output height"),
    "w": ("out_w", _int(4, 256), "an output width"),
    # the pages' own state
    "step": ("prov_step", _int(1, 49), "a step of the run"),
    "row": ("px_row", _int(0, 255), "a pixel row"),
    "col": ("px_col", _int(0, 255), "a pixel column"),
    "view": ("loc_view", _choice(("four machines", "k-sweep", "branch at a step")), "a comparison"),
    # Extra fingers: the study and the hand opened (the page checks the hand is one of the study's)
    "study_seeds": ("fing_seeds", _int(1, 512), "a number of seeds"),
    "study_k": ("fing_ks", _study_ks, "window sizes such as 9,13,17"),
    "study_steps": ("fing_steps", _study_steps, "one of the study's step counts"),
    "hand": ("_link_fing_pick", _hand, "k:seed of a hand in the study"),
    "fix": ("_link_fing_fix", _int(3, 255, odd=True), "an odd window size"),
    # Network vs machine (the page checks the network is there and the seed is one of the compared)
    "net": ("_link_net_choice", _network, "a network's name"),
    "net_k": ("net_sched", _schedule_mode, "calibrated or sidebar"),
    "net_seeds": ("net_seeds", _int(1, 8), "1 to 8 seeds"),
    "net_steps": ("net_steps_shown", lambda t: int(_choice(("150", "20"))(t)), "150 or 20"),
    "net_seed": ("net_seed_pick", _int(0, 2**31 - 1), "one of the compared seeds"),
    # Theories side by side: the machines shown, the mode of the curves, the pixel clicked
    "th": ("th_machines", _machines, "machine names such as is,els,wiener"),
    "th_mode": ("th_mode", _choice(("own", "network")), "own or network"),
    "th_row": ("th_row", _int(0, 255), "a pixel row"),
    "th_col": ("th_col", _int(0, 255), "a pixel column"),
}
OUTPUT_SIZE = ("out_h", "out_w")  # applied after the training set is loaded (a new set resets them)


def read_link() -> None:
    """On the session's first run: the URL's choices into st.session_state; bad ones dropped, with a message."""
    ss = st.session_state
    if ss.get("_link_read"):
        return
    ss["_link_read"] = True
    params = st.query_params.to_dict()
    ignored, size = [], {}
    for name, text in params.items():
        if name == "page":  # which page a link opens "/" on (elsviz/ui/nav.py)
            continue
        if name not in PARAMS:
            ignored.append(f"`{name}` (unknown)")
            continue
        key, parse, what = PARAMS[name]
        try:
            value = parse(str(text))
        except (ValueError, KeyError, TypeError):
            ignored.append(f"`{name}={text}` (expected {what})")
            continue
        if key in OUTPUT_SIZE:
            size[key] = value
        else:
            ss[key] = value
    steps = int(ss.get("steps", 20))
    if "prov_step" in ss and not 1 <= ss["prov_step"] <= steps - 1:
        ignored.append(f"`step={ss.pop('prov_step')}` (this run has steps {steps - 1} to 1)")
    if size:
        ss["_link_size"] = size
    if ignored:
        ss["_link_message"] = ("Some settings in the link were not used; their defaults are shown instead: "
                               + ", ".join(ignored) + ".")


def link_size() -> dict:
    """The output size the link asked for ({'out_h': .., 'out_w': ..}), once, after a set is loaded."""
    return st.session_state.pop("_link_size", {})


def link_message() -> None:
    """Show (once) what the link held that could not be used."""
    message = st.session_state.pop("_link_message", None)
    if message:
        st.warning(message, icon=":material/link_off:")


def current_params() -> dict[str, str]:
    """The shareable part of the current choices, as URL parameters (strings)."""
    ss = st.session_state
    out: dict[str, str] = {}
    if ss.get("dataset") not in data.builtin_names():
        return out  # a local path or an upload cannot be shared
    out["set"] = ss["dataset"]
    resize, limit = data.app_subset(ss["dataset"])  # what a link without them opens the set with
    if int(ss.get("limit") or 0) or limit:  # 0 (all) is written where the set opens on a subset
        out["limit"] = str(int(ss.get("limit") or 0))
    if int(ss.get("resize") or 0) or resize:
        out["resize"] = str(int(ss.get("resize") or 0))
    if ss["dataset"] == "hands" and ss.get("fingers"):
        out["fingers"] = ",".join(str(int(f)) for f in ss["fingers"])
    out["machine"] = ss["machine"]
    if ss["machine"] != "is":
        mode = {v: k for k, v in LOC.items()}.get(ss.get("loc_mode"))
        if mode:
            out["loc"] = mode
            if mode == "k":
                out["k"] = str(int(ss["k"]))
            else:
                out["schedule"] = str(ss["preset"])
    out["steps"], out["seed"] = str(int(ss["steps"])), str(int(ss["seed"]))
    if ss.get("label", ANY) != ANY:
        out["label"] = str(int(ss["label"]))
    if ss["machine"] in ("els", "bbels") and ss.get("out_h"):
        out["h"], out["w"] = str(int(ss["out_h"])), str(int(ss["out_w"]))
    return out


def write_link(**page) -> None:
    """Put the current choices, and the page's own (e.g. step=3, row=4, col=5), into the browser's URL and
    into the sidebar's "Copy link" (a page calls it again with its own state after the sidebar did)."""
    params = current_params()
    if params:
        params.update({name: str(value) for name, value in page.items() if value is not None})
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)
    slot = st.session_state.get("_link_slot")
    if slot is None:
        return
    with slot.container(), st.expander("Copy link to this view", icon=":material/link:"):
        if not params:
            st.caption("A link cannot carry a local path or an upload: choose a built-in set to share this view.")
            return
        base = (getattr(st.context, "url", None) or "").split("?")[0]
        st.code(f"{base}?{urlencode(params)}", language=None, wrap_lines=True)
        st.caption("Opening it (on any elsviz server) shows this page with these settings.")
