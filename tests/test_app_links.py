"""Shareable links (AppTest): the view lives in the URL, a fresh session opened on that URL shows the same
picture, and a bad or stale link falls back to the defaults with a message, never a traceback."""
from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.test_app import app, ok, output_pixels, text

ROOT = Path(__file__).resolve().parents[1]


def opened(params: dict, page: str = "app_pages/reverse_diffusion.py") -> AppTest:
    """A fresh session (nothing in session_state) opened on a link to the page with these parameters (a link
    copied on a page carries its path: the Reverse diffusion page's, unless told)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params.update(params)
    at.switch_page(page)
    return ok(at.run())


def test_a_link_reopens_the_same_run():
    at = ok(app(limit=150, steps=6))
    at.slider(key="k").set_value(7)
    ok(at.run())
    at.radio(key="machine").set_value("els")
    ok(at.run())
    at.number_input(key="seed").set_value(3)
    ok(at.run())
    link = dict(at.query_params)
    assert {"set": "mnist", "resize": "16", "limit": "150", "machine": "els", "loc": "k", "k": "7", "steps": "6",
            "seed": "3"}.items() <= link.items()
    again = opened(link)
    assert "ELS, k=7, 6 steps, seed 3" in text(again)
    assert output_pixels(again) == output_pixels(at)
    assert not again.warning
    code = [c.value for c in again.sidebar.get("code")]
    assert code and "k=7" in code[0] and "seed=3" in code[0]  # the link to copy


def test_a_link_keeps_the_size_of_a_set_whatever_the_app_opens_with():
    """The app opens MNIST at 16x16, other sets as they load: a link to MNIST at its own 28x28 says resize=0,
    and a link to the hands (no resize in it) does not inherit MNIST's 16."""
    at = ok(app(limit=40, steps=3, resize=0))
    link = dict(at.query_params)
    assert link["set"] == "mnist" and link["resize"] == "0"
    again = opened(link)
    assert again.session_state["resize"] == 0 and "**mnist**: 40 images, 28x28" in text_sidebar(again)
    assert output_pixels(again) == output_pixels(at)
    hands = opened({"set": "hands", "limit": "20", "steps": "3", "loc": "k", "k": "5"})
    assert hands.session_state["resize"] == 0 and "**hands**: 20 images, 32x32" in text_sidebar(hands)


def text_sidebar(at: AppTest) -> str:
    return "\n".join(c.value for c in at.sidebar.caption)


def test_a_link_reopens_the_provenance_step_and_pixel():
    at = ok(app(limit=150, steps=6))
    at.switch_page("app_pages/provenance.py")
    ok(at.run())
    at.number_input(key="px_row").set_value(3)
    at.number_input(key="px_col").set_value(11)
    ok(at.run())
    at.select_slider(key="prov_step").set_value(2)
    ok(at.run())
    link = dict(at.query_params)
    assert {"step": "2", "row": "3", "col": "11"}.items() <= link.items()
    again = opened(link, "app_pages/provenance.py")
    assert again.select_slider(key="prov_step").value == 2
    assert "Pixel (3, 11)" in text(again)


def test_a_bad_or_stale_link_falls_back_to_defaults_with_a_message():
    at = opened({"limit": "150", "steps": "6", "k": "four", "machine": "gan", "step": "30", "seed": "-1",
                 "set": "no-such-set", "zoom": "2"})
    warning = " ".join(w.value for w in at.warning)
    for bad in ["k=four", "machine=gan", "step=30", "seed=-1", "set=no-such-set", "zoom"]:
        assert bad in warning, bad
    assert at.radio(key="machine").value == "bbels" and at.session_state["seed"] == 0
    assert "bbELS, schedule mnist-resnet, 6 steps, seed 0" in text(at)  # the defaults, and the good parts kept
    assert not at.error
