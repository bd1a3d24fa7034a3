"""The Streamlit app through Streamlit's AppTest: every page loads, and the sidebar drives what is shown.

Runs use a subset of the default set (MNIST at 16x16; limit) and few steps to stay quick; the browser test runs
the defaults.
"""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from elsviz.errors import ElsvizError

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["app_pages/reverse_diffusion.py", "app_pages/provenance.py", "app_pages/locality.py"]


def app(limit=150, steps=6, loc_mode="one k", **state) -> AppTest:
    """The app on a subset, few steps and (unlike the default, the paper's schedule) one k, on the Reverse
    diffusion page (a first visit opens on the Lesson: tests/test_app_lesson.py)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.switch_page(PAGES[0])
    at.session_state["limit"] = limit
    at.session_state["steps"] = steps
    if loc_mode is not None:
        at.session_state["loc_mode"] = loc_mode
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_page(path: str, timeout: float = 300, /, **state) -> AppTest:
    """The app with this session state (any keys: path, timeout included), switched to the page at
    path (e.g. "app_pages/network.py"), run."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(path)
    return ok(at.run())


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    return "\n".join(parts)


def output_pixels(at: AppTest) -> str:
    """What the player shows as the output: the posterior mean of its last frame (JSON of the image data)."""
    spec = json.loads(at.main.get("plotly_chart")[0].proto.spec)
    return json.dumps(spec["frames"][-1]["data"][1]["z"])


def images(at: AppTest) -> list[str]:
    return [url for im in at.get("image") for url in im.value]


def test_opens_on_the_papers_schedule():
    """A new user first sees real handwriting (MNIST, 16x16) and the paper's calibrated schedule (digit-like
    pictures), drawn as k per step."""
    at = ok(app(loc_mode=None))
    assert at.radio(key="loc_mode").value == "paper schedule"
    assert "schedule mnist-resnet" in text(at)
    assert at.session_state["dataset"] == "mnist" and at.session_state["resize"] == 16
    assert "**mnist**: 150 images, 16x16" in "\n".join(c.value for c in at.sidebar.caption)


def test_every_page_loads_and_shows_its_parts():
    at = ok(app())
    assert not errors(at)
    assert len(json.loads(at.main.get("plotly_chart")[0].proto.spec)["frames"]) == 5  # steps 5 .. 1
    assert any(url.endswith(".gif") for url in images(at))  # the looping animation
    assert "bbELS, k=5, 6 steps, seed 0" in text(at)

    at.switch_page(PAGES[1])
    ok(at.run())
    assert "Pixel (8, 8)" in text(at)  # the centre pixel until one is clicked
    assert "Its top keys" in text(at)
    assert "Distinct training images in this picture" in [m.label for m in at.metric]

    at.switch_page(PAGES[2])
    ok(at.run())
    assert "Now and before" in [h.value for h in at.subheader]
    for view in ["four machines", "k-sweep", "branch at a step"]:
        at.session_state["loc_view"] = view
        ok(at.run())
        start = [b for b in at.button if b.label.startswith("Run the")]  # longer comparisons wait for a click
        if start:
            start[0].click()
            ok(at.run())
        assert not errors(at), view
        assert len(images(at)) >= 2, view


def test_machine_k_seed_and_dataset_change_the_picture():
    at = ok(app())
    seen = [output_pixels(at)]

    at.slider(key="k").set_value(7)
    ok(at.run())
    assert "k=7" in text(at)
    seen.append(output_pixels(at))

    at.radio(key="machine").set_value("els")
    ok(at.run())
    assert "ELS, k=7" in text(at)
    seen.append(output_pixels(at))

    at.number_input(key="seed").set_value(3)
    ok(at.run())
    seen.append(output_pixels(at))

    next(b for b in at.button if b.label == "New seed").click()
    ok(at.run())
    assert at.session_state["seed"] != 3
    seen.append(output_pixels(at))

    at.selectbox(key="dataset").set_value("hands")
    ok(at.run())
    assert "hands" in "\n".join(c.value for c in at.sidebar.caption)
    assert json.loads(at.main.get("plotly_chart")[0].proto.spec)["frames"][-1]["data"][1]["z"]
    seen.append(output_pixels(at))
    assert len(set(seen)) == len(seen)  # every change showed a new picture


def element_types(block) -> list[str]:
    """The types of every element under block, in page order (placeholders included)."""
    out = []
    for node in block.children.values():
        out.append(node.type)
        if hasattr(node, "children"):
            out += element_types(node)
    return out


@pytest.mark.parametrize("seed,page", list(enumerate(["app_pages/reverse_diffusion.py", "app_pages/provenance.py",
                                                       "app_pages/locality.py", "app_pages/lesson.py"], start=424240)))
def test_a_page_keeps_its_places_whether_its_run_computes_or_comes_from_the_cache(seed, page):
    """Streamlit matches a rerun's elements to the previous rerun's by their place: a progress bar
    only a computing rerun leaves behind shifts the rest by one, and the next rerun briefly shows the
    previous rerun's last element twice (the browser saw the step player's caption twice after a
    k change). The computing rerun and the cached one lay out the same elements."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    for key, value in {"limit": 120, "steps": 5, "loc_mode": "one k", "seed": seed}.items():  # a seed of its own:
        at.session_state[key] = value  # the first rerun computes
    at.switch_page(page)
    computed = element_types(ok(at.run()).main)
    if page != "app_pages/lesson.py":  # (the lesson runs its own specs)
        assert at.session_state["_last_result"].seconds > 0
    cached = element_types(ok(at.run()).main)
    assert computed == cached


def shown_from_the_neighbours(at: AppTest) -> None:
    """After a run at k = 5: k = 3, 7, 9 and 1 were computed in the background, and the slider moved
    to 7 shows that run from the cache, not run again."""
    from elsviz.ui.runs import runs_cache, _worker

    assert _worker().idle(timeout=300)
    s = at.session_state["_settings"]
    near = {k: runs_cache().get((s.dataset_key, s.spec.__class__(**{**s.spec.__dict__, "k": k}))) for k in (3, 7, 9, 1)}
    assert all(near.values()), [k for k, r in near.items() if r is None]
    assert all((s.dataset_key, r.spec) in _worker().done for r in near.values())  # made in the background
    at.slider(key="k").set_value(7)
    ok(at.run())
    assert at.session_state["_last_result"] is near[7]  # shown from the cache, not run again


def test_live_k_computes_the_neighbouring_k_in_the_background():
    """After a run with one k, k = 3 and 7 are computed in the background: the slider shows them at once.
    Changing the settings stops background work for the old ones."""
    import threading

    from elsviz.app.worker import Job
    from elsviz.ui.runs import _worker

    at = ok(app(seed=515151))
    s = at.session_state["_settings"]
    shown_from_the_neighbours(at)
    assert "k=7" in text(at)
    assert _worker().idle(timeout=120)

    started, release, starts = threading.Event(), threading.Event(), []

    def stuck(check):  # a background run of the old settings that would never end by itself
        starts.append(1)
        started.set()
        while not release.wait(0.01):
            check()

    key = (s.dataset_key, "an old neighbour")
    _worker().submit([Job(key, s.engine, stuck)], at.session_state["_live_owner"])  # this session's plan
    assert started.wait(10)
    at.number_input(key="seed").set_value(515152)  # other settings: the old neighbours are not wanted
    ok(at.run())
    release.set()
    assert _worker().idle(timeout=120)
    assert key in _worker().stopped and key not in _worker().done
    assert len(starts) == 1  # dropped, not put back to resume after the new run


def test_one_sessions_new_settings_leave_another_sessions_neighbours_alone():
    """Two users on one server: when one changes the seed, only that session's background runs
    are dropped; the other's neighbour is finished."""
    import threading

    from elsviz.app.worker import Job
    from elsviz.ui.runs import _worker

    first, second = ok(app(seed=525252)), ok(app(seed=535353))
    assert _worker().idle(timeout=120)
    assert first.session_state["_live_owner"] != second.session_state["_live_owner"]
    started, release = threading.Event(), threading.Event()

    def neighbour(check):  # the first session's background run, held until released
        started.set()
        while not release.wait(0.01):
            check()

    s = first.session_state["_settings"]
    key = (s.dataset_key, "the first session's neighbour")
    _worker().submit([Job(key, s.engine, neighbour)], first.session_state["_live_owner"])
    assert started.wait(10)
    second.number_input(key="seed").set_value(545454)  # the second user moves on
    ok(second.run())
    release.set()
    assert _worker().idle(timeout=120)
    # it paused while the second session's run used the engine (the foreground comes first), then
    # went on to the end: it was not dropped with the second session's old plan
    assert key in _worker().done


def test_live_k_works_ahead_on_the_32x32_hands_too():
    """Hands runs take seconds now: after one with one k, its neighbours are computed ahead as well."""
    at = ok(app(limit=0, steps=4, dataset="hands", seed=616161))  # all 1,000: a 32x32 workload
    assert "hands" in "\n".join(c.value for c in at.sidebar.caption)
    shown_from_the_neighbours(at)


def test_choices_survive_page_switches_and_schedules():
    at = ok(app())
    at.slider(key="k").set_value(9)
    ok(at.run())
    at.switch_page(PAGES[1])
    ok(at.run())
    assert at.slider(key="k").value == 9
    assert "k = 9" in text(at)
    at.radio(key="loc_mode").set_value("paper schedule")
    ok(at.run())
    assert "schedule mnist-resnet" in text(at)
    at.radio(key="loc_mode").set_value("one k")
    ok(at.run())
    assert at.slider(key="k").value == 9  # kept while the slider was hidden
    at.switch_page(PAGES[2])
    ok(at.run())
    assert "Now: bbELS, k=9" in text(at) and "of the pixels changed" in text(at)  # beside the schedule run


def test_provenance_pixel_choice_and_step():
    at = app()
    at.switch_page(PAGES[1])
    ok(at.run())
    at.number_input(key="px_row").set_value(2)
    at.number_input(key="px_col").set_value(13)
    ok(at.run())
    assert "Pixel (2, 13)" in text(at)
    keys = [c for im in at.get("image") for c in im.captions if "weight" in c]
    assert 1 <= len(keys) <= 8
    at.select_slider(key="prov_step").set_value(4)
    ok(at.run())
    assert "Step 4, t = 0.67" in text(at)


def test_a_refused_k_shows_a_message_and_keeps_the_previous_result():
    at = ok(app())
    before = output_pixels(at)
    at.session_state["_k_table"] = [4] * 6  # an even window: the machine refuses it
    at.radio(key="loc_mode").set_value("per-step table")
    ok(at.run())
    assert any("odd" in e for e in errors(at))
    assert "Showing the previous result" in text(at)
    assert output_pixels(at) == before


def test_a_missing_path_shows_a_message_and_keeps_the_set():
    at = ok(app())
    at.selectbox(key="dataset").set_value("a local path ...")
    at.session_state["path"] = "/no/such/folder/images.zip"
    ok(at.run())
    assert any("does not exist" in e for e in errors(at))
    assert "Still using **mnist**" in "\n".join(c.value for c in at.sidebar.caption)
    assert at.main.get("plotly_chart")  # the page still shows a run


def test_a_long_run_says_how_long_and_offers_a_subset():
    """A run estimated above a few seconds asks first, whatever the set, and offers a subset of a sensible
    size that runs without asking; a short run (the digits) does not ask; a confirmed run runs."""
    from elsviz.app.runs import Estimator
    from elsviz.ui.runs import estimator, _worker

    est = estimator()
    saved = dict(est.__dict__)

    def slow():  # pretend the machine is busy: every run takes 20x its cost, until runs say otherwise
        est._paces = {("cpu",): [20.0] * Estimator.KEEP}

    slow()
    try:
        digits = ok(app(limit=0, steps=3, seed=424242, dataset="digits"))  # all 1,797 digits: a second or two even so
        assert not digits.warning and digits.main.get("plotly_chart")
        assert _worker().idle(timeout=120)  # its neighbouring k, computed in the background, are timed too
        slow()

        at = ok(app(limit=0, steps=3, seed=424242, dataset="hands", k=11))  # (a k no other test builds tables for)
        warning = " ".join(w.value for w in at.warning)
        assert "will take about" in warning and "1,000 training images" in warning
        offer = [b for b in at.button if "subset" in b.label]
        assert offer and not at.main.get("plotly_chart")
        offer[0].click()
        ok(at.run())
        assert 100 <= at.session_state["limit"] <= 500  # not "4 images"
        assert at.main.get("plotly_chart") and not at.warning  # the subset runs without asking

        slow()  # (the subset's run taught the hands' true pace) busy again, and back to all the hands: it asks again
        at.session_state["limit"] = 0
        ok(at.run())
        anyway = [b for b in at.button if "anyway" in b.label]
        anyway[0].click()
        ok(at.run())
        assert at.main.get("plotly_chart") and not at.warning  # confirmed: it ran
    finally:
        est.__dict__.update(saved)


class Upload:
    """Stands in for Streamlit's UploadedFile: name, size, getvalue()."""

    def __init__(self, name: str, data: bytes):
        self.name, self._data, self.size = name, data, len(data)

    def getvalue(self) -> bytes:
        return self._data


def png(shape, value=128) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(shape, value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_are_read_and_bad_ones_refused():
    from elsviz.ui import data

    _, train = data.from_upload([Upload(f"{i}.png", png((12, 10), 40 * i)) for i in range(4)])
    assert len(train) == 4 and train.shape[1:] == (12, 10)
    assert train.name == "upload" and "elsviz-" not in train.description
    with pytest.raises(ElsvizError, match="not images"):
        data.from_upload([Upload("notes.txt", b"hello")])
    with pytest.raises(ElsvizError, match="single"):
        data.from_upload([Upload("a.zip", b"PK"), Upload("b.png", png((4, 4)))])
    with pytest.raises(ElsvizError, match="at most"):
        big = Upload("huge.npz", b"")
        big.size = data.MAX_UPLOAD_BYTES + 1
        data.from_upload([big])
    with pytest.raises(ElsvizError, match="Resize to") as mixed:  # mixed sizes without a resize
        data.from_upload([Upload("a.png", png((8, 8))), Upload("b.png", png((9, 7)))])
    assert "elsviz-" not in str(mixed.value)  # no temporary folder in the message
    _, resized = data.from_upload([Upload("a.png", png((8, 8))), Upload("b.png", png((9, 7)))], size=6)
    assert resized.shape[1:] == (6, 6)
    with pytest.raises(ElsvizError):  # a .png that is not one
        data.from_upload([Upload("broken.png", b"not a png at all")])


def test_colour_sets_and_other_output_sizes_work_on_every_page():
    at = ok(app(limit=40, steps=4, dataset="photos"))
    assert "photos" in "\n".join(c.value for c in at.sidebar.caption)
    assert not errors(at)
    at.session_state["out_h"], at.session_state["out_w"] = 24, 40  # ELS and bbELS make other sizes
    ok(at.run())
    assert "24x40" in text(at)
    at.switch_page(PAGES[1])
    ok(at.run())
    at.number_input(key="px_col").set_value(39)
    ok(at.run())
    assert "Pixel (12, 39)" in text(at)
    at.switch_page(PAGES[2])
    for view in ["four machines", "k-sweep", "branch at a step"]:
        at.session_state["loc_view"] = view
        ok(at.run())
        assert not errors(at), view
