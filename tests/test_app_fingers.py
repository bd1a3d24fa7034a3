"""The "Extra fingers" page through Streamlit's AppTest, on a tiny setting (30 hands, 3 seeds, two window
sizes, 4 steps) so that each test runs in seconds: the study's histogram and rate, the gallery, one
hand in detail with its branch test and sentence, the user's own hand images, mixed finger counts, and
bad input (a message, never a traceback)."""
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

from elsviz import load_dataset
from elsviz.analysis.fingers import DEFAULT_STUDY
from tests.test_app import element_types, ok, open_page
from tests.test_app_lesson import downloads, media  # noqa: F401 - media: a fixture
from tests.test_app_links import opened

ROOT = Path(__file__).resolve().parents[1]
PAGE = "app_pages/extra_fingers.py"
TINY = dict(dataset="hands", limit=30, fing_seeds=3, fing_ks="5 13", fing_steps=5)


def page(**state) -> AppTest:
    return open_page(PAGE, 600, **state)


def text(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
                     + [w.value for w in at.warning] + [e.value for e in at.error])


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.main.get("plotly_chart")]


def y_title(spec: dict) -> str:
    return spec["layout"].get("yaxis", {}).get("title", {}).get("text", "")


def button(at: AppTest, start: str):
    found = [b for b in at.button if b.label.startswith(start)]
    assert found, f"no button {start!r} among {[b.label for b in at.button]}"
    return found[0]


def studied(**state) -> AppTest:
    """The page after the tiny study (run here, or found in the app's cache from another test)."""
    at = page(**{**TINY, **state})
    go = [b for b in at.button if b.label.startswith("Run the study")]
    if go:
        go[0].click()
        ok(at.run())
    return at


def test_the_study_shows_counts_rates_gallery_and_one_hand_explained():
    at = page(**TINY, seed=500)  # seeds no other test studies: the study is not cached yet
    go = button(at, "Run the study")
    assert "3 seeds x 2 window sizes" in go.label and "about" in go.label  # the estimate, before it starts
    assert not at.main.get("plotly_chart")  # nothing runs before the click
    go.click()
    ok(at.run())
    assert not at.error, [e.value for e in at.error]
    laid_out = element_types(at.main)
    assert element_types(ok(at.run()).main) == laid_out  # the study from the cache: every element in its place
    heads = [h.value for h in at.subheader]
    assert heads[:2] == ["How often: finger counts against the window size", "Which seeds: the gallery"]
    assert heads[2].startswith("One hand: seed ")
    specs = charts(at)
    hist, rate = specs[0], specs[1]
    assert [t["name"] for t in hist["data"]] == ["k = 5", "k = 13", "IS"]
    assert sum(sum(t["customdata"]) for t in hist["data"]) == 9  # 3 seeds, three rows
    assert rate["data"][0]["x"] == [5, 13] and any("IS" in a["text"] for a in rate["layout"]["annotations"])
    assert "Hands with more than 5 fingers, of 3 seeds" in text(at)
    # the study's own settings, where the study is, beside the sidebar's that do not apply
    assert ("**The study:** bbELS on 3 seeds (500 to 502) at k = 5 and 13 (one window size for every step of a run), "
            "5 steps each") in text(at)
    assert "the sidebar's locality (schedule mnist-resnet) and steps (20) do not apply here" in text(at)
    assert heads[2].endswith(", 5 steps")
    assert "Click a hand" in text(at)  # the gallery is there
    assert "The training hands each finger was copied from" in text(at) or "not a hand" in text(at)
    assert any(y_title(s) == "winning weight" for s in specs)  # the region's timeline
    sentence = at.info[-1].value
    assert sentence.startswith(("This hand has", "No hand to explain"))
    assert "is the extra one" not in sentence  # no finger is called extra before the branch test
    captions = "\n".join(c for im in at.get("image") for c in im.captions)
    assert "(outlined) is the extra one" not in captions
    if "more than 5" in sentence:
        assert "the branch test below decides" in captions

    # the branch test: finger count against the step
    button(at, "Run the branch test").click()
    ok(at.run())
    assert not at.error
    birth = [s for s in charts(at) if y_title(s) == "fingers counted"]
    assert birth and birth[0]["data"][0]["x"]  # the branches tried, one point each
    ticks = birth[0]["layout"]["xaxis"]["ticktext"]
    assert ticks and all(re.fullmatch(r"\d<br>\(\d/4\)", t) for t in ticks)  # step s is the (5 - s)-th of 4
    sentence = at.info[-1].value
    explained = re.search(r"Finger (\d+) of \d+ \(the .*?\) is the extra one", sentence)
    if explained:  # the branch test named it: outlined, and the one inspected below
        assert at.radio(key="fing_region").value == f"finger {explained.group(1)}"
        assert f"finger {explained.group(1)} (outlined) is the extra one" in "\n".join(
            c for im in at.get("image") for c in im.captions)


def test_another_hand_and_a_clicked_piece_open_below_the_gallery():
    at = studied()
    seeds = [0, 1, 2]  # the sidebar's seed on
    first = at.session_state["fing_pick"]
    other = (13, next(s for s in seeds if (13, s) != first))
    at.session_state["fing_pick"] = other  # what a click on the gallery sets
    ok(at.run())
    assert f"One hand: seed {other[1]}, k = 13, 5 steps" in [h.value for h in at.subheader]
    at.session_state["fing_region"] = "the piece I clicked"
    at.session_state["fing_pixel"] = (16, 16)  # what a click on the provenance picture sets
    ok(at.run())
    captions = "\n".join(c for im in at.get("image") for c in im.captions)
    assert "the piece I clicked (16, 16):" in captions
    assert "copied patch" in text(at) or "shared" in text(at)
    at.radio(key="fing_region").set_value("the pixel I clicked")
    ok(at.run())
    assert "the pixel I clicked (16, 16): 1 pixel" in "\n".join(c for im in at.get("image") for c in im.captions)
    assert any(y_title(s) == "winning weight" for s in charts(at))  # its timeline


def test_bad_input_shows_a_message_never_a_traceback():
    at = page(**{**TINY, "fing_seeds": 0})
    assert any("at least one seed" in e.value for e in at.error)
    for typed, says in [("4", "odd"), ("five", "neither"), ("", "at least one"), ("99", "too large")]:
        at.session_state["fing_seeds"] = 3
        at.text_input(key="fing_ks").set_value(typed)
        ok(at.run())
        assert any(says in e.value for e in at.error), (typed, [e.value for e in at.error])
        assert not [b for b in at.button if b.label.startswith("Run the study")]


def test_is_has_no_window_to_study_and_says_so():
    at = page(**TINY, machine="is")
    assert "IS memorises whole training hands" in text(at)
    assert not at.error and not [b for b in at.button if b.label.startswith("Run the study")]


def test_digits_are_too_small_and_the_page_offers_the_hands():
    at = page(limit=50, fing_seeds=2)
    assert "counts fingers on hand silhouettes" in text(at) and "16x16" in text(at)
    button(at, "Use the hands set").click()
    ok(at.run())
    assert at.session_state["dataset"] == "hands" and at.session_state["limit"] == DEFAULT_STUDY.n_train
    assert f"hands**, {DEFAULT_STUDY.n_train} images" in text(at)
    assert button(at, "Run the study")


def test_images_that_are_not_hands_are_thresholded_then_refused():
    at = page(dataset="photos", limit=40, resize=32, fing_seeds=2)
    assert "thresholded into white-on-black silhouettes" in text(at)
    assert "do not look like hands" in text(at)
    assert not [b for b in at.button if b.label.startswith("Run the study")]
    assert button(at, "Use the hands set")


def test_photos_of_hands_from_a_folder_are_thresholded_and_studied(tmp_path):
    """The user's own images: dark hands on a light table, as 8-bit PNGs read from a local path."""
    hands = load_dataset("hands", limit=24, seed=3)
    for n, img in enumerate(hands.images):
        grey = np.where(img[0].numpy() > 0, 60, 200).astype(np.uint8)  # dark hand, light table
        Image.fromarray(np.stack([grey, grey, (grey * 0.9).astype(np.uint8)], -1)).save(tmp_path / f"hand{n:02d}.png")
    at = page(dataset="a local path ...", path=str(tmp_path), fing_seeds=2, fing_ks="5", fing_steps=5)
    assert "thresholded into white-on-black silhouettes" in text(at)
    assert "All 24 training images read as hands" in text(at)
    button(at, "Run the study").click()
    ok(at.run())
    assert not at.error and "Which seeds: the gallery" in [h.value for h in at.subheader]


def test_hands_with_mixed_finger_counts_from_the_sidebar():
    at = page(dataset="hands", limit=40, fing_seeds=2, fingers=[4, 6])
    assert at.multiselect(key="fingers").value == [4, 6]
    sidebar = "\n".join(c.value for c in at.sidebar.caption)
    assert "4/6" in sidebar or "4 and 6" in sidebar or "mixed" in sidebar.lower(), sidebar
    assert at.selectbox(key="label").options  # mixed counts are labelled: a class per count
    assert "with 4" in text(at) and "with 6" in text(at)  # the training hands' own counts


def test_the_study_and_the_hand_download_as_csv_json_and_png(media):
    import csv
    import io

    at = studied()
    files = downloads(at, media)
    assert {"fing_dl_csv", "fing_dl_json", "fing_dl_gallery", "fing_dl_hand_png", "fing_dl_hand_json"} <= set(files)
    name, table = files["fing_dl_csv"]
    rows = list(csv.DictReader(io.StringIO(table.decode())))
    assert name.endswith(".csv") and len(rows) == 3 * 2 + 3  # 3 seeds x (k = 5, 13, IS)
    assert {r["k"] for r in rows} == {"5", "13", ""} and {r["steps"] for r in rows} == {"5"}
    hist = charts(at)[0]  # the histogram counts the same hands the table lists
    for trace in hist["data"]:
        k = trace["name"].removeprefix("k = ")
        listed = Counter(int(r["fingers"]) for r in rows if (r["k"] or "IS") == k)
        assert sum(trace["customdata"]) == sum(listed.values()) == 3
    study = json.loads(files["fing_dl_json"][1])
    assert study["seeds"] == [0, 1, 2] and study["steps"] == 5 and study["ks"] == [5, 13]
    hand = json.loads(files["fing_dl_hand_json"][1])
    pick = at.session_state["fing_pick"]
    assert (hand["seed"], hand["k"], hand["steps"]) == (pick[1], pick[0], 5)
    assert hand["sentence"] == at.info[-1].value
    assert files["fing_dl_hand_json"][0] != files["fing_dl_json"][0]  # names that tell the files apart
    for key in ("fing_dl_gallery", "fing_dl_hand_png"):
        assert Image.open(io.BytesIO(files[key][1])).format == "PNG"


def test_a_link_opens_the_same_hand_even_before_the_study_runs():
    at = studied()
    other = (13, 2)
    at.session_state["fing_pick"] = other  # what a click on the gallery sets
    ok(at.run())
    link = dict(at.query_params)
    assert {"set": "hands", "limit": "30", "study_seeds": "3", "study_k": "5,13", "study_steps": "5",
            "hand": "13:2"}.items() <= link.items()
    again = opened(link, PAGE)
    assert not again.warning, [w.value for w in again.warning]
    assert again.text_input(key="fing_ks").value == "5 13" and again.session_state["fing_steps"] == 5
    assert "One hand: seed 2, k = 13, 5 steps" in [h.value for h in again.subheader]
    first = [im.value for im in at.get("image")][0]
    assert [im.value for im in again.get("image")][0] == first  # the same hand, pixel for pixel
    # a study not run yet on this server: the hand opens at once, the study waits for its button
    fresh = opened({**link, "study_seeds": "2", "study_k": "13,17", "hand": "17:1"}, PAGE)
    assert button(fresh, "Run the study: 2 seeds x 2 window sizes")
    assert "One hand: seed 1, k = 17, 5 steps" in [h.value for h in fresh.subheader]
    assert "opened below without it" in text(fresh) and not fresh.warning
    # a hand that is not in the study is not opened, and the page says so
    bad = opened({**link, "hand": "13:40"}, PAGE)
    assert any("seed 40, k = 13" in w.value and "not one of this study's" in w.value for w in bad.warning)


def test_a_bad_link_keeps_the_study_defaults_and_says_what_it_dropped():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)  # the link opens this page first
    at.query_params.update({"set": "hands", "limit": "30", "study_steps": "7", "study_k": "9;13", "hand": "four:1",
                            "study_seeds": "0"})
    at.switch_page(PAGE)
    ok(at.run())
    warning = " ".join(w.value for w in at.warning)
    for bad in ("study_steps=7", "study_k=9;13", "hand=four:1", "study_seeds=0"):
        assert bad in warning, bad
    assert at.session_state["fing_steps"] == DEFAULT_STUDY.steps and not at.error
    assert at.text_input(key="fing_ks").value == " ".join(map(str, DEFAULT_STUDY.ks))
