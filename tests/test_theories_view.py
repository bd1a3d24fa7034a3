"""elsviz.app.theories (Theories side by side, without Streamlit) and its figures: the k each machine takes,
the network chosen, the two modes' curves recomputed from the runs, what each machine copied at a pixel
(Wiener: nothing), the time estimate, and the lesson's three claims recomputed from the numbers over many
seeds. Small sets and few steps, so it stays quick."""
import math

import numpy as np
import pytest
import torch

from elsviz import Engine, figures, load_dataset, sample
from elsviz.analysis import claims
from elsviz.analysis.compare import agreement, noise, on_network_path, r2
from elsviz.app import theories as th
from elsviz.machines import MACHINE_NAMES, k_limit
from elsviz.schedule import locality_schedule

STEPS = 5


class Net:
    """A stand-in for a trained network: the ideal score of another subset (deterministic, no training)."""

    def __init__(self, train):
        self.engine = Engine(train, "is", "cpu")
        self.device = torch.device("cpu")
        self.train = train

    def denoise(self, x, t, k=None, label=None):
        return self.engine.denoise(x, t, 5, label=label)


@pytest.fixture(scope="module")
def small():
    return load_dataset("digits", size=8, limit=80)


@pytest.fixture(scope="module")
def run(small):
    """The network stand-in and all nine machines from seed 4's noise, with both modes' means."""
    net = Net(load_dataset("digits", size=8, limit=30, seed=1))
    net_run = sample(net, seed=4, steps=STEPS)
    runs, means = {}, {}
    for m, spec in th.specs(th.MACHINES, "mnist-resnet", STEPS, 4, small.shape[1:]).items():
        engine = Engine(small, m, "cpu")
        runs[m] = sample(engine, seed=4, steps=STEPS, k=list(spec.schedule()))
        means[m] = on_network_path(engine, net_run, spec.schedule())
    return th.TheoryRun(net_run, runs, means, network_name="stand-in")


def test_each_machine_takes_the_sidebar_k_clamped_to_what_it_allows():
    hw = (8, 8)
    assert th.machine_k("wiener", 3, 20, hw) == th.NO_WINDOW_K and th.machine_k("is", "mnist-resnet", 20, hw) == 5
    assert th.machine_k("bbels", "mnist-resnet", 20, hw) == "mnist-resnet"  # k up to 15 <= 2 * 8 - 1
    els = th.machine_k("els", "mnist-resnet", 20, hw)  # ELS and PSPC: windows inside the 8x8 images
    assert isinstance(els, tuple) and max(els) == k_limit("els", hw) == 7
    assert list(els) == [min(k, 7) for k in locality_schedule("mnist-resnet", 20)]
    assert th.machine_k("pspc", 11, 20, hw) == 7 and th.machine_k("ls", 11, 20, hw) == 11
    assert th.machine_k("els", (3, 9, 9), 3, hw) == (3, 7, 7)
    specs = th.specs(th.MACHINES, 9, 20, 7, hw)
    assert list(specs) == list(MACHINE_NAMES) and {s.seed for s in specs.values()} == {7}


def test_the_network_is_the_one_trained_on_the_set_by_name_and_shape(tmp_path):
    import json

    from elsviz.networks import BUNDLED, network_for

    base = json.loads((BUNDLED / "digits-resnet" / "config.json").read_text())

    def folder(name, arch, dataset, side):
        path = tmp_path / name
        path.mkdir()
        config = {**base, "arch": arch, "dataset": {**base["dataset"], "name": dataset, "shape": [1, side, side]}}
        (path / "config.json").write_text(json.dumps(config))
        return path

    nets = {"a (bundled)": folder("a", "unet", "digits", 16), "b (bundled)": folder("b", "resnet", "mnist", 28),
            "c (trained here)": folder("c", "resnet", "digits", 16), "d (trained here)": folder("d", "resnet", "digits", 8),
            "e (bundled)": folder("e", "resnet", "digits", 16), "f (trained here)": tmp_path / "broken"}
    assert network_for("digits", nets, (1, 16, 16)) == "e (bundled)"  # a ResNet, then a bundled one
    del nets["e (bundled)"]
    assert network_for("digits", nets, (1, 16, 16)) == "c (trained here)"  # a ResNet before a UNet
    assert network_for("digits", nets, (1, 8, 8)) == "d (trained here)"
    assert network_for("mnist", nets, (1, 28, 28)) == "b (bundled)"
    assert network_for("mnist", nets, (1, 16, 16)) is None  # another size: not this set
    assert network_for("mnist", nets) == "b (bundled)"  # any size
    assert network_for("digits", {}, (1, 16, 16)) is None


def test_both_modes_curves_are_the_scores_of_the_runs(run):
    net = {f.i: f.mean for f in run.network.frames}
    for m in th.MACHINES:
        own = {f.i: f.mean for f in run.runs[m].frames}
        assert [s for s, _ in run.curve(m)] == list(range(STEPS - 1, 0, -1))  # noisiest first
        for i, v in run.curve(m, "own"):
            assert v == pytest.approx(agreement(net[i], own[i]), nan_ok=True)
        for i, v in run.curve(m, "own", "r2"):
            assert v == pytest.approx(r2(net[i], own[i]), nan_ok=True)
        for i, v in run.curve(m, "network", "agreement"):
            assert v == pytest.approx(agreement(net[i], run.means_on_network[m][i]), nan_ok=True)
        assert run.final(m) == pytest.approx(agreement(run.network.final, run.runs[m].final))
    # mode "network" gives every machine the network's own x_t: at the first step both modes see the same noise
    first = STEPS - 1
    assert dict(run.curve("bbels", "network"))[first] == pytest.approx(dict(run.curve("bbels", "own"))[first])
    engine = Engine(run.runs["is"].denoiser.train, "is", "cpu")
    f = run.network.frames[1]
    assert torch.equal(run.means_on_network["is"][f.i], engine.denoise(f.x, f.t, 5).mean)
    assert dict(run.curve("is", "network")) != dict(run.curve("is", "own"))  # the two modes differ after it


def test_the_table_and_json_hold_both_modes_for_every_machine(run):
    rows = run.table()
    assert len(rows) == len(th.MACHINES) * (STEPS - 1)
    assert set(rows[0]) >= {"machine", "step", "agreement_own", "r2_own", "agreement_network", "r2_network", "k"}
    wiener = [r for r in rows if r["machine"] == "wiener"]
    assert all(r["k"] is None for r in wiener) and all(r["k"] is not None for r in rows if r["machine"] == "bbels")
    data = run.to_json()
    assert set(data["final"]) == set(th.MACHINES) and set(data["curves"]["els"]) == {"own", "network"}


def test_what_each_machine_copied_at_a_pixel(run, small):
    pixel = (2, 5)
    sources = th.pixel_sources(run, pixel)
    assert [s.machine for s in sources] == list(th.MACHINES)
    for src in sources:
        f = run.runs[src.machine].frames[-1]
        if src.machine == "wiener":  # no source: index -1, weight NaN, count 0
            assert not src.copies and src.image == -1 and math.isnan(src.weight) and src.count == 0
            text = th.source_sentence(src, "digit")
            assert "copies nothing" in text and "#" not in text
            continue
        assert src.copies and src.image == int(f.source_index[0, 2, 5])
        assert src.pos == tuple(int(v) for v in f.source_pos[0, 2, 5])
        assert src.weight == pytest.approx(float(f.source_weight[0, 2, 5]))
        assert (src.window is None) == (src.machine in ("is", "nearest", "pca", "cfdm"))
        text = th.source_sentence(src, "digit")
        assert f"**#{src.image}**" in text and MACHINE_NAMES[src.machine] in text
        assert f"weight {claims.amount(src.weight)}" in text
        if src.window is not None:
            assert f"{src.window}x{src.window}" in text and f"({src.pos[0]}, {src.pos[1]})" in text
    pc = th.principal_component(small.images)
    assert pc.shape == small.shape and float(pc.abs().max()) == pytest.approx(1.0)
    centred = (small.images - small.images.mean(0)).flatten(1).double()
    variance = lambda v: float((centred @ v.flatten().double()).pow(2).mean() / v.double().pow(2).sum())
    g = torch.Generator().manual_seed(0)
    assert all(variance(pc) >= variance(torch.randn(small.shape, generator=g)) for _ in range(20))  # the most


def test_the_estimate_of_the_theories_grows_with_their_work():
    one = th.theory_seconds("pca", 100, (1, 8, 8), [5] * 4)
    assert th.theory_seconds("pca", 1000, (1, 8, 8), [5] * 4) > one
    assert th.theory_seconds("pca", 100, (1, 8, 8), [5] * 8) > one
    assert th.theory_seconds("pspc", 100, (1, 8, 8), [7] * 4) > th.theory_seconds("pspc", 100, (1, 8, 8), [3] * 4)
    assert th.theory_seconds("cfdm", 100, (1, 8, 8), [5], {"samples": 100}) > th.theory_seconds("cfdm", 100, (1, 8, 8), [5])
    assert th.network_seconds(200_000, (1, 16, 16), 20) == pytest.approx(th.NETWORK_MADD_S * 200_000 * 256 * 19)


# -- the lesson's claims, over many seeds -------------------------------------------------------------------
SEEDS = list(range(24))


@pytest.fixture(scope="module")
def lesson_outputs():
    """Wiener, IS, bbELS and ELS from the noise of 24 seeds (one batch each), 8x8 digits, 10 steps."""
    train = load_dataset("digits", size=8, limit=200)
    outputs = {}
    for m, k in (("wiener", 5), ("is", 5), ("bbels", "mnist-resnet"), ("els", 5)):
        engine = Engine(train, m, "cpu")
        outputs[m] = sample(engine, x=noise(engine, SEEDS), steps=10, k=k).final
    return train, outputs


def test_the_lessons_sentences_are_true_of_each_seeds_numbers(lesson_outputs):
    train, outputs = lesson_outputs
    images = train.images.double()
    flat = images.flatten(1)
    typical = claims.typical_distance(train.images)
    kinds = {m: set() for m in outputs}
    for s in SEEDS:
        said = th.lesson_claims(train.images, {m: out[s] for m, out in outputs.items()}, noun="digit")
        assert list(said) == ["wiener", "is", "bbels", "els"]
        for m, c in said.items():
            rms = (flat - outputs[m][s].double().flatten()).pow(2).mean(1).sqrt()  # recomputed, float64
            idx = int(rms.argmin())
            assert c.numbers["distance"] == pytest.approx(float(rms[idx]), abs=1e-5)
            assert float(rms[c.numbers["nearest"]]) == pytest.approx(float(rms.min()), abs=1e-5)
            assert f"#{c.numbers['nearest']}" in c.text and claims.amount(c.numbers["distance"]) in c.text
            copy = float(rms.min()) <= claims.COPY_RMS
            kinds[m].add(c.kind)
            if m == "wiener":
                grey = float((outputs[m][s].abs() < th.GREY).float().mean())
                train_grey = float((train.images.abs() < th.GREY).float().mean())
                assert c.kind == ("blurs" if grey > train_grey else "sharp")
                assert claims.percent(grey) in c.text and claims.percent(train_grey) in c.text
                assert ("it blurs" in c.text) == (grey > train_grey) and "names no training digit" in c.text
            elif m == "is":
                assert c.kind == ("memorises" if copy else "unsettled")
                assert ("memorises" in c.text) == copy
            else:
                assert c.kind == ("copy" if copy else "creates")
                assert ("creates" in c.text) == (not copy) and ("gives back" in c.text) == copy
                if not copy:
                    like = float(rms.min()) <= typical
                    assert ("reads as a digit of this set" in c.text) == like
    # what the lesson teaches holds on this set: Wiener blurs, IS memorises, the local machines create
    assert kinds["wiener"] == {"blurs"} and kinds["is"] == {"memorises"}
    assert "creates" in kinds["bbels"] and "creates" in kinds["els"]


# -- figures ----------------------------------------------------------------------------------------------
def test_the_grid_has_a_panel_per_output_on_one_grey_scale_and_clicks_find_their_pixel(run):
    titles = ["network"] + [MACHINE_NAMES[m] for m in run.machines]
    assert len(titles) == 10 and titles[1:] == list(MACHINE_NAMES.values())
    outs = [run.network.final[0]] + [run.runs[m].final[0] for m in run.machines]
    outs[6] = outs[6] * 3  # a picture beyond -1..1 is clipped, not stretched to its own range
    target = 32
    pic = figures.theories_grid(outs, titles, [""] + ["0.50"] * 9, columns=5, target=target)
    arr = np.asarray(pic)
    where = {}  # (panel, pixel) -> the first point of the drawing a click there finds it at
    for y in range(pic.height):
        for x in range(pic.width):
            cell = figures.theories_grid_cell({"x": x, "y": y, "width": pic.width, "height": pic.height}, 10, (8, 8),
                                              columns=5, target=target, captions=True)
            if cell is not None:
                where.setdefault(cell, (x, y))
                assert arr[y, x].tolist() == figures.to_rgb(outs[cell[0]].clamp(-1, 1))[cell[1]].tolist(), (x, y, cell)
    assert set(where) == {(n, (r, c)) for n in range(10) for r in range(8) for c in range(8)}  # every pixel of all ten
    found = where[(9, (7, 7))]
    # half the size on a phone: the same pixel
    half = {"x": found[0] / 2, "y": found[1] / 2, "width": pic.width / 2, "height": pic.height / 2}
    assert figures.theories_grid_cell(half, 10, (8, 8), columns=5, target=target, captions=True) == (9, (7, 7))
    assert figures.theories_grid_cell({"x": 1, "y": 1, "width": pic.width, "height": pic.height}, 10, (8, 8),
                                      columns=5, target=target, captions=True) is None  # the margin
    marked = np.asarray(figures.theories_grid(outs, titles, columns=5, target=target, mark=(2, 3)))
    assert marked.shape != arr.shape or not np.array_equal(marked, arr)


def test_long_titles_and_captions_stay_over_their_own_picture():
    tiles = [figures.picture(torch.zeros(1, 4, 4), 40) for _ in range(3)]
    pic = figures.panels(tiles, ["Smoothed CFDM and a much longer name than fits", "IS", "LS"],
                         ["copies nothing; 1st PC shown and more words", "a", "b"], columns=3, caption_lines=2)
    arr = np.asarray(pic).astype(int)
    gap = 10
    between = arr[:, gap + 40:gap + 40 + gap]  # the gap between the first and second panel: never written on
    assert (between == 255).all()


def test_the_sources_strip_handles_a_machine_that_copies_nothing(run, small):
    sources = th.pixel_sources(run, (4, 4))
    pc = th.principal_component(small.images)
    pic = figures.pixel_sources_strip(small.images, sources, component=pc, columns=3, target=48)
    blank = figures.pixel_sources_strip(small.images, sources, columns=3, target=48)  # no component: a grey tile
    assert pic.size == blank.size and not np.array_equal(np.asarray(pic), np.asarray(blank))
    only = figures.pixel_sources_strip(small.images, [s for s in sources if s.machine == "wiener"], target=48)
    assert only.width < pic.width


def test_the_curves_figure_keeps_each_machines_colour_in_both_metrics(run):
    machines = ["wiener", "bbels", "is"]
    agree = {m: run.curve(m) for m in machines}
    fit = {m: run.curve(m, metric="r2") for m in machines}
    fit["is"] = [(s, -7.0 if n == 0 else math.nan if n == 1 else v) for n, (s, v) in enumerate(fit["is"])]
    fig = figures.theory_curves_figure(agree, fit)
    assert len(fig.data) == 6
    for tr in fig.data:
        m = next(k for k, name in MACHINE_NAMES.items() if name == tr.name)
        assert tr.line.color == figures.MACHINE_RGB[m]
        assert tr.line.dash == ("dash" if m == "wiener" else "solid")
    low = next(tr for tr in fig.data if tr.name == "IS" and tr.yaxis == "y2")
    assert low.y[0] == -1.0 and low.customdata[0] == -7.0 and low.y[1] is None  # floored, and a gap for NaN
    assert len({figures.MACHINE_RGB[m] for m in th.MACHINES}) == 9
