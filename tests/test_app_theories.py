"""The "Theories side by side" page and the lesson's section on three theories, through Streamlit's AppTest.

A tiny network is trained here on 8x8 digits (found through ELSVIZ_NETWORKS), so the page runs the nine
machines on the sidebar's 8x8 digits with few steps; one test opens the default set (MNIST, for which no
network here is trained: the bundled digits ResNet on the digits), with few steps.

Until the page is in the app's navigation (elsviz/ui/nav.py), the tests add it there themselves.
"""
import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from elsviz import figures, load_dataset
from elsviz.app import theories as th
from elsviz.machines import MACHINE_NAMES, MACHINE_SENTENCES
from elsviz.networks import train_network
from tests.test_app import ok, open_page, text
from tests.test_app_lesson import downloads, media  # noqa: F401 - media: a fixture

ROOT = Path(__file__).resolve().parents[1]
PAGE = "app_pages/theories.py"
SMALL = {"size": 8, "limit": 60}
STATE = {"dataset": "digits", "resize": 8, "limit": 60, "steps": 5}


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    base = tmp_path_factory.mktemp("networks")
    train_network(load_dataset("digits", **SMALL), base / "tiny", steps=4, width=8, layers=2, batch=8, source="digits",
                  options=SMALL)
    return base


@pytest.fixture(autouse=True)
def registered(networks, monkeypatch):
    """The tiny network found by the app."""
    monkeypatch.setenv("ELSVIZ_NETWORKS", str(networks))


def page(**state) -> AppTest:
    return open_page(PAGE, 300, **{**STATE, **state})


def element(at: AppTest, key: str):
    """The element of the page with this key (a custom component is not among AppTest's known kinds)."""
    stack = [at.main]
    while stack:
        node = stack.pop()
        if getattr(node, "key", None) == key:
            return node
        stack.extend(getattr(node, "children", {}).values())
    raise AssertionError(f"no element with key {key}")


def locate(pic: Image.Image, panel: int, pixel: tuple[int, int]) -> tuple[int, int]:
    """A point of the grid picture (8x8 outputs, 16 pixels a side) where a click finds this panel and pixel."""
    return next((x, y) for y in range(0, pic.height, 3) for x in range(0, pic.width, 3)
                if figures.theories_grid_cell({"x": x, "y": y, "width": pic.width, "height": pic.height}, 10, (8, 8),
                                              target=128, captions=True) == (panel, pixel))


def grid_picture(at: AppTest) -> Image.Image:
    args = json.loads(element(at, "th_click").proto.json_args)
    return Image.open(io.BytesIO(base64.b64decode(args["src"].split(",", 1)[1])))


def test_the_page_runs_all_nine_machines_and_the_network_from_one_noise():
    at = page()
    assert not at.error, [e.value for e in at.error]
    assert "Theories side by side" in [t.value for t in at.title]
    assert "The network is **tiny (trained here)**" in text(at)  # trained on these 8x8 digits
    result = at.session_state["_theories"]
    assert result.machines == list(th.MACHINES) and len(result.machines) == 9
    start = result.network.x_init
    assert all(np.array_equal(t.x_init, start) for t in result.runs.values())  # the same noise for all
    pic = grid_picture(at)
    outputs = [result.network.final[0]] + [result.runs[m].final[0] for m in result.machines]
    for n, img in enumerate(outputs):  # each panel shows its output: the corner pixel of each
        where = locate(pic, n, (0, 0))
        assert list(pic.getpixel(where)) == figures.to_rgb(img.clamp(-1, 1))[0, 0].tolist(), n
    said = text(at)
    for m in th.MACHINES:  # what each assumes, one sentence each
        assert f"**{MACHINE_NAMES[m]}**: {MACHINE_SENTENCES[m]}" in said
    charts = at.main.get("plotly_chart")
    assert len(charts) == 1 and len(json.loads(charts[0].proto.spec)["data"]) == 18  # nine machines, two metrics


def test_a_pixel_names_each_machines_source_and_wiener_copies_nothing():
    at = page(th_row=2, th_col=6)
    result = at.session_state["_theories"]
    said = text(at)
    assert "At pixel (2, 6)" in said
    assert "**Wiener** copies nothing" in said
    for m in ("is", "bbels", "els", "pspc", "nearest"):
        f = result.runs[m].frames[-1]
        idx = int(f.source_index[0, 2, 6])
        line = next(line for line in said.splitlines() if line.startswith(f"- **{MACHINE_NAMES[m]}** weighs most"))
        assert f"**#{idx}**" in line, (m, line)
    # a click on the grid: the pixel under it, in any panel
    pic = grid_picture(at)
    where = locate(pic, 3, (5, 1))
    at.session_state["th_click"] = {"x": where[0] / 2, "y": where[1] / 2, "width": pic.width / 2,
                                    "height": pic.height / 2, "unix_time": 1}  # drawn at half size (a phone)
    ok(at.run())
    assert (at.session_state["th_row"], at.session_state["th_col"]) == (5, 1)
    assert "At pixel (5, 1)" in text(at)
    f = result.runs["bbels"].frames[-1]
    assert f"of training digit **#{int(f.source_index[0, 5, 1])}**" in text(at)


def test_the_mode_toggle_draws_the_other_curves_and_the_link_keeps_the_view(media):
    at = page(th_machines=["wiener", "bbels", "is"])
    result = at.session_state["_theories"]
    assert result.machines == ["is", "bbels", "wiener"]
    own = json.loads(at.main.get("plotly_chart")[0].proto.spec)["data"]
    at.radio(key="th_mode").set_value("network")
    ok(at.run())
    network = json.loads(at.main.get("plotly_chart")[0].proto.spec)["data"]
    assert len(own) == len(network) == 6
    bb = next(tr for tr in network if tr["name"] == "bbELS")
    assert bb["y"] == [None if v != v else v for _, v in result.curve("bbels", "network")]
    assert own != network
    params = at.query_params
    assert params["th"] == "is,bbels,wiener" and params["th_mode"] == "network"
    assert params["seed"] == "0" and params["set"] == "digits"
    files = downloads(at, media)
    names = {key: name for key, (name, _) in files.items()}
    assert set(names) == {"th_dl_png", "th_dl_csv", "th_dl_json"}
    for name in names.values():
        assert "digits-n60" in name and "seed0" in name and "is-bbels-wiener" in name
    rows = files["th_dl_csv"][1].decode().splitlines()
    assert len(rows) == 1 + 3 * 4 and rows[0].startswith("machine,name,step,t,k,agreement_own")
    data = json.loads(files["th_dl_json"][1])
    assert set(data["final"]) == {"is", "bbels", "wiener"} and data["curves"]["bbels"]["network"]["r2"]


def test_a_shared_link_opens_the_same_machines_mode_and_pixel():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params.update({"set": "digits", "resize": "8", "limit": "60", "steps": "5", "seed": "3",
                            "th": "wiener,pca", "th_mode": "network", "th_row": "1", "th_col": "7"})
    at.switch_page(PAGE)
    ok(at.run())
    assert at.session_state["_theories"].machines == ["wiener", "pca"]
    assert at.session_state["_theories"].seed == 3 and at.radio(key="th_mode").value == "network"
    assert "At pixel (1, 7)" in text(at)


def test_the_page_seed_is_the_sidebars():
    at = page(th_machines=["nearest"])
    at.number_input(key="th_seed").set_value(5)
    ok(at.run())
    assert at.session_state["seed"] == 5 and at.session_state["_theories"].seed == 5


def test_a_long_run_asks_first(monkeypatch):
    import elsviz.ui.theories as ui

    monkeypatch.setattr(ui, "estimate", lambda v, specs: 95.0)
    at = page(th_machines=["wiener"], seed=11)
    assert "_theories" not in at.session_state
    assert "will take about 2 min" in " ".join(w.value for w in at.warning)
    next(b for b in at.button if b.label.startswith("Run them")).click()
    ok(at.run())
    assert at.session_state["_theories"].seed == 11


def test_the_default_set_runs_on_the_digits_with_the_bundled_network():
    at = open_page(PAGE, 600, steps=3)  # MNIST at 16x16: no network here was trained on it
    assert not at.error, [e.value for e in at.error]
    assert "No network here was trained on mnist at 16x16" in text(at) and "**digits-resnet**" in text(at)
    asked = [b for b in at.button if b.label.startswith("Run them")]  # a slow machine is asked first (tested above)
    if asked:
        asked[0].click()
        ok(at.run())
    result = at.session_state["_theories"]
    assert result.machines == list(th.MACHINES) and tuple(result.network.final.shape) == (1, 1, 16, 16)


# -- the lesson's section ------------------------------------------------------------------------------------
def lesson_script():
    from elsviz.app.runs import RunSpec
    from elsviz.ui import data
    from elsviz.ui.sidebar import Settings
    from elsviz.ui.theories import lesson_theories
    import streamlit as st

    key, train = data.builtin("digits", 8, 120)
    s = Settings(key, train, data.engine(key, "bbels", train), RunSpec())
    st.session_state["said"] = lesson_theories(s, 6, int(st.session_state.get("seed", 2)))


def test_the_lesson_section_shows_four_outputs_and_a_true_sentence_each(media):
    at = AppTest.from_function(lesson_script, default_timeout=300)
    at.session_state["seed"] = 2
    ok(at.run())
    said = at.session_state["said"]
    assert list(said) == ["wiener", "is", "bbels", "els"]
    shown = "\n".join(m.value for m in at.markdown)
    for claim in said.values():
        assert claim.text in shown
    assert said["wiener"].kind == "blurs" and said["is"].kind == "memorises"
    assert len(at.get("image")) == 1
    (name, data), = downloads(at, media).values()
    assert name.endswith("seed2.png") and "digits-n120" in name
    assert Image.open(io.BytesIO(data)).width >= 4 * 192
