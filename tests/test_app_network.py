"""The "Network vs machine" page through Streamlit's AppTest, on tiny networks made here (8x8 digits).

Nothing is downloaded and nothing outside the repository is read: the networks live in tmp_path,
which the app finds through ELSVIZ_NETWORKS.
"""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import numpy as np
from PIL import Image

from elsviz import Engine, calibrate, load_dataset, load_network, sample
from elsviz.analysis.compare import resample
from elsviz.networks import save_schedule, train_network
from tests.test_app import ok, open_page, text
from tests.test_app_lesson import downloads, media  # noqa: F401 - media: a fixture

ROOT = Path(__file__).resolve().parents[1]
PAGE = "app_pages/network.py"
SMALL = {"size": 8, "limit": 40}


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """Two tiny ResNets on 8x8 digits: `tiny` (calibrated) and `halfway` (stopped after 3 of 6 steps)."""
    base = tmp_path_factory.mktemp("networks")
    train = load_dataset("digits", **SMALL)
    kw = dict(width=8, layers=2, batch=8, source="digits", options=SMALL)
    net = train_network(train, base / "tiny", steps=4, **kw)
    save_schedule(net, {"schedule": calibrate(net, Engine(train, "bbels", "cpu"), seeds=2), "machine": "bbels",
                        "seeds": [0, 1]})
    done = []
    train_network(train, base / "halfway", steps=6, report_every=1, progress=done.append, stop=lambda: len(done) == 3,
                  **kw)
    return base


@pytest.fixture(autouse=True)
def found_here(networks, monkeypatch):
    monkeypatch.setenv("ELSVIZ_NETWORKS", str(networks))


def page(**state) -> AppTest:
    return open_page(PAGE, 300, **{"net_seeds": 2, **state})


def beats(at: AppTest) -> str:
    return next(m.value for m in at.metric if m.label == "seeds where bbELS beats IS")


def bold(spec: dict) -> list[str]:
    """The schedules drawn bold in a schedules chart."""
    return [t["name"] for t in spec["data"] if t["line"]["width"] == 3]


def grid_png(at: AppTest) -> str:
    return at.get("image")[0].value[0]


def test_the_page_compares_a_network_with_the_machines():
    at = page(net_choice="tiny (trained here)")
    assert not at.error, [e.value for e in at.error]
    assert "Network vs machine" in [t.value for t in at.title]
    assert "ResNet (2 layers, width 8" in text(at)
    assert at.radio(key="net_sched").value == "calibrated for this network"
    labels = {m.label for m in at.metric}
    assert labels == {"median agreement, bbELS", "median agreement, ELS", "median agreement, IS",
                      "seeds where bbELS beats IS"}
    assert beats(at).endswith("of 2")
    charts = at.main.get("plotly_chart")
    assert len(charts) == 4  # schedules beside the presets, agreement beside its baselines, the scatter, by step
    spec = json.loads(charts[0].proto.spec)
    names = [trace["hovertemplate"].split("<br>")[0] for trace in spec["data"]]  # each line's own name
    assert names[0] == "calibrated: tiny" and "the sidebar's: mnist-resnet" in names  # and the sidebar's
    assert bold(spec) == ["calibrated: tiny"]  # the one the machines use
    assert "The machines use calibrated: tiny" in text(at) and not at.info
    scatter = json.loads(charts[2].proto.spec)
    assert len(scatter["data"][1]["x"]) == 2  # one point per seed, and the diagonal
    assert len(at.get("image")) == 2  # the grid and the step-by-step pair

    before = grid_png(at)
    at.slider(key="net_seeds").set_value(3)
    ok(at.run())
    assert beats(at).endswith("of 3")
    assert grid_png(at) != before  # a third row

    at.radio(key="net_sched").set_value("the sidebar's locality")
    ok(at.run())
    assert not at.error
    spec = json.loads(at.main.get("plotly_chart")[0].proto.spec)
    assert bold(spec) == ["the sidebar's: mnist-resnet"]  # highlighted: what the machines use now
    assert "The machines use the sidebar's: mnist-resnet" in text(at)
    note = " ".join(i.value for i in at.info)  # a paper preset fits the paper's network, not this one
    assert "mnist-resnet** is the schedule the paper fitted to its own network (MNIST, ResNet" in note
    assert "not to tiny" in note and "calibrated for this network" in note


def test_the_calibrated_schedule_is_offered_in_the_sidebar(networks):
    at = page(net_choice="tiny (trained here)", loc_mode="paper schedule", limit=100, steps=6)
    options = at.selectbox(key="preset").options  # as shown: "name (note)"
    assert "calibrated: tiny (fitted to the network tiny, bbels, 2 samples)" in options
    assert options[0].startswith("mnist-resnet")
    at.selectbox(key="preset").set_value("calibrated: tiny")
    at.switch_page("app_pages/locality.py")
    ok(at.run())
    assert not at.error
    fitted = json.loads((networks / "tiny" / "schedule.json").read_text())["schedule"]
    assert at.session_state["_last_result"].spec.k == tuple(resample(fitted, 6))  # the run used it


def test_a_stopped_network_resumes_on_the_page(networks):
    at = page(net_choice="halfway (trained here)")
    assert "stopped after 3 of 6 steps" in text(at)
    next(b for b in at.button if b.label == "Resume its training").click()
    ok(at.run())
    assert "6 of 6 steps" in text(at)
    assert json.loads((networks / "halfway" / "config.json").read_text())["training"]["steps_done"] == 6


def test_bad_folders_show_a_message_and_the_page_keeps_working(tmp_path):
    at = page(net_choice="a local path ...", net_path=str(tmp_path / "nowhere"))
    assert any("does not exist" in e.value for e in at.error)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{cut short")
    at.text_input(key="net_path").set_value(str(broken))
    ok(at.run())
    assert any("corrupt" in e.value for e in at.error)
    at.selectbox(key="net_choice").set_value("tiny (trained here)")
    ok(at.run())
    assert not at.error and len(at.metric) == 4


def test_a_network_trained_on_the_page_is_saved_and_shown(networks):
    at = page(net_choice="tiny (trained here)", dataset="digits", limit=40, resize=8, net_name="fresh", net_steps=100)
    next(b for b in at.button if b.label == "Train on digits").click()
    ok(at.run())
    assert at.selectbox(key="net_choice").value == "fresh (trained here)"
    assert "ResNet (6 layers, width 48" in text(at) and "100 of 100 steps" in text(at)
    assert "no calibrated schedule yet" in text(at)  # the machines use the sidebar's locality until calibrated
    config = json.loads((networks / "fresh" / "config.json").read_text())
    assert config["dataset"]["source"] == "digits" and config["dataset"]["options"] == {"size": 8, "limit": 40}

    next(b for b in at.button if b.label.startswith("Calibrate bbELS on 4 samples")).click()
    ok(at.run())
    fitted = json.loads((networks / "fresh" / "schedule.json").read_text())
    assert fitted["seeds"] == [1000, 1001, 1002, 1003] and len(fitted["schedule"]) == 20
    assert at.radio(key="net_sched").value == "calibrated for this network"
    assert " ".join(map(str, fitted["schedule"][19:0:-1])) in text(at)  # k per step, as the page lists it


def test_agreement_stands_beside_baselines_recomputed_from_the_network(networks, media):
    """The page's per-seed numbers (its CSV) and its sentence against the network's own runs, redone here."""
    import csv
    import io
    import re

    from elsviz.analysis.compare import BASELINES, agreement, median, random_images, spread

    at = page(net_choice="tiny (trained here)", net_seeds=3)
    assert not at.error
    spec = json.loads(at.main.get("plotly_chart")[1].proto.spec)
    rows = list(dict.fromkeys(t["y"][0] for t in spec["data"]))
    assert rows == ["bbELS", "ELS", "IS", *BASELINES.values()]
    files = downloads(at, media)
    name, table = files["net_dl_csv"]
    per = list(csv.DictReader(io.StringIO(table.decode())))
    assert name.endswith(".csv") and [int(r["seed"]) for r in per] == [0, 1, 2]
    net = load_network(networks / "tiny")
    train = load_dataset("digits", **SMALL)
    outs = [sample(net, seed=s, steps=150).final[0] for s in range(3)]
    chosen = random_images([0, 1, 2], len(train))
    for s, r in enumerate(per):
        assert float(r["agreement_network-150_other-seed"]) == pytest.approx(
            agreement(outs[s], outs[(s + 1) % 3]), abs=1e-4)
        assert int(r["seed_network-150_other-seed"]) == (s + 1) % 3
        assert int(r["image_network-150_random-image"]) == chosen[s]
        assert float(r["agreement_network-150_random-image"]) == pytest.approx(
            agreement(outs[s], train.images[chosen[s]]), abs=1e-4)
        every = [agreement(outs[s], im) for im in train.images]  # the nearest, by brute force
        assert float(r["agreement_network-150_nearest-image"]) == pytest.approx(max(every), abs=1e-4)
        assert int(r["image_network-150_nearest-image"]) == int(np.argmax(every))
    # each dot of the chart is a seed's number; the sentence states the medians and where each machine lies
    medians = {b: median([float(r[f"agreement_network-150_{b}"]) for r in per]) for b in BASELINES}
    sentence = next(m.value for m in at.markdown if m.value.startswith("For scale"))
    stated = re.findall(r"at (-?\d\.\d\d) with", sentence.split(". ")[0])
    assert stated == [f"{medians[b]:.2f}" for b in BASELINES], sentence
    for m, label in (("bbels", "bbELS"), ("els", "ELS"), ("is", "IS")):
        value = median([float(r[f"agreement_network-150_{m}"]) for r in per])
        said = re.search(r"(?<![A-Za-z])" + re.escape(label) + r" \((-?\d\.\d\d)\) lies (above|below|between|level "
                         r"with) ([^;.]*)", sentence)
        assert said and said.group(1) == f"{value:.2f}", sentence
        stated = {b: f"{medians[b]:.2f}" for b in BASELINES}  # compared as the sentence states them
        higher = [b for b in BASELINES if float(stated[b]) > float(said.group(1))]
        lower = [b for b in BASELINES if float(stated[b]) < float(said.group(1))]
        level = [b for b in BASELINES if stated[b] == said.group(1)]
        assert said.group(2) == ("level with" if level else "above" if not higher else "below" if not lower
                                 else "between"), sentence
    table = next(m.value for m in at.markdown if m.value.startswith("| agreement with the network"))
    for b, label in BASELINES.items():  # the spread, stated: median and quartiles of the seeds' numbers
        q1, med, q3 = spread([float(r[f"agreement_network-150_{b}"]) for r in per])
        assert f"| {label} | {med:.2f} | {q1:.2f} .. {q3:.2f} |" in table
    data = json.loads(files["net_dl_json"][1])
    assert data["machines_use"] == "calibrated: tiny" and len(data["per_seed"]) == 3
    assert data["median_baselines"]["network-150"]["nearest-image"] == pytest.approx(medians["nearest-image"], abs=1e-4)
    assert Image.open(io.BytesIO(files["net_dl_png"][1])).format == "PNG"
    assert len({n for n, _ in files.values()}) == 3  # three different file names


def test_a_link_reopens_the_network_view(networks):
    from tests.test_app_links import opened

    at = page(net_choice="tiny (trained here)", net_seeds=3)
    at.radio(key="net_sched").set_value("the sidebar's locality")
    at.radio(key="net_steps_shown").set_value(20)
    ok(at.run())
    at.select_slider(key="net_seed_pick").set_value(2)
    ok(at.run())
    link = dict(at.query_params)
    assert {"net": "tiny (trained here)", "net_k": "sidebar", "net_seeds": "3", "net_steps": "20",
            "net_seed": "2"}.items() <= link.items()
    again = opened(link, PAGE)
    assert not again.warning and not again.error
    assert again.selectbox(key="net_choice").value == "tiny (trained here)"
    assert again.radio(key="net_sched").value == "the sidebar's locality"
    assert again.radio(key="net_steps_shown").value == 20 and again.select_slider(key="net_seed_pick").value == 2
    assert [m.value for m in again.metric] == [m.value for m in at.metric]
    gone = opened({**link, "net": "no-such-net"}, PAGE)
    assert any("no-such-net" in w.value for w in gone.warning) and not gone.error
