"""Trained networks against the machines: training, checkpoints, bad checkpoints, agreement, calibration, compare.

Everything runs on 8x8 digits (40 images) and networks of a few thousand weights trained for a few
steps: fast, and enough to check what users rely on (not how good a network gets: docs/AGREEMENT.md).
"""
import copy
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from elsviz import ElsvizError, Engine, agreement, calibrate, load_dataset, load_network, r2, sample
from elsviz import compare
from elsviz.cli.commands import main
from elsviz.analysis.compare import calibration, noise
from elsviz.networks import read_config, save_schedule, train_network
from elsviz.schedule import alpha_sigma, beta

SMALL = {"size": 8, "limit": 40}
TINY = dict(width=8, layers=2, batch=8)


@pytest.fixture(scope="module")
def digits8():
    return load_dataset("digits", **SMALL)


def tiny(train, folder, steps=6, **kw):
    kw = {**TINY, "save_every": 3, "source": "digits", "options": SMALL, **kw}
    return train_network(train, folder, steps=steps, **kw)


@pytest.fixture(scope="module")
def trained(digits8, tmp_path_factory):
    """A tiny ResNet trained for 6 steps (checkpoints at 3 and 6)."""
    folder = tmp_path_factory.mktemp("net") / "resnet"
    tiny(digits8, folder)
    return folder


def weights_of(net):
    return {k: v.clone() for k, v in net.model.state_dict().items()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict:
    return {p.name: sha(p) for p in sorted(folder.iterdir())}


# -- training and checkpoints ---------------------------------------------------------------------
def test_training_writes_a_checkpoint_that_loads(trained):
    names = sorted(p.name for p in trained.iterdir())
    assert names == ["config.json", "model-0000006.pt", "train-0000006.pt"]  # the step-3 files are gone
    config = json.loads((trained / "config.json").read_text())
    assert config["weights"] == "model-0000006.pt" and config["training"]["steps_done"] == 6
    assert config["dataset"] == {"name": "digits", "shape": [1, 8, 8], "n": 40, "source": "digits",
                                 "options": SMALL, "classes": load_dataset("digits", **SMALL).classes}
    net = load_network(trained)
    assert net.finished and net.steps_done == 6 and net.arch == "resnet"
    assert net.train.shape == (1, 8, 8)
    assert net.train.load().images.shape == (40, 1, 8, 8)  # the set is found again from config.json
    # the weights are a plain state_dict: torch.load(weights_only=True) reads it as tensors
    state = torch.load(trained / "model-0000006.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_resuming_continues_exactly_where_training_stopped(digits8, tmp_path):
    straight = tiny(digits8, tmp_path / "straight", steps=8)
    done = []
    half = tiny(digits8, tmp_path / "halves", steps=8, report_every=1, progress=done.append,
                stop=lambda: len(done) == 5)
    assert half.steps_done == 5
    resumed = tiny(digits8, tmp_path / "halves", steps=8, resume=True)
    assert resumed.steps_done == 8
    for name, value in weights_of(straight).items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_the_schedule_of_a_batch_of_times_is_the_schedule_of_each():
    """Training noises a batch with alpha_sigma of a tensor: the same formula as the machines' scalar one."""
    ts = [1e-3, 0.01, 0.25, 0.5, 0.6, 0.9, 0.999, 1.0]
    a, b = alpha_sigma(torch.tensor(ts, dtype=torch.float64))
    assert a.shape == b.shape == (len(ts),)
    for i, t in enumerate(ts):
        assert (a[i].item(), b[i].item()) == pytest.approx(alpha_sigma(t), abs=1e-12), t
    # in float32 (training's precision) beta = 1 - cos^2 is as exact as cos^2 near 1 can be rounded, 2^-24;
    # at t = 0.001 that is 1% of b_t, which the network learns with
    beta32 = beta(torch.tensor(ts))
    assert beta32.dtype == torch.float32
    for i, t in enumerate(ts):
        assert beta32[i].item() == pytest.approx(beta(t), abs=2.0**-23), t
    assert beta(torch.zeros(2)).tolist() == [0.0, 0.0] and beta(0.0) == 0.0


def reference_training(train, steps: int, seed: int, width: int, layers: int, batch: int, lr: float, ema: float):
    """The training train_network's docstring describes, written out in one loop: the same seed gives the same
    initial weights, batches, times, noise and dropped labels; AdamW with a linear warm-up over 5% of the steps
    (at most 200) and cosine decay to lr / 10; the EMA's decay min(ema, (1 + step) / (10 + step))."""
    from elsviz.networks import build_model

    classes = int(train.labels.max()) + 1
    torch.manual_seed(seed)
    model = build_model("resnet", train.shape, width, layers, num_classes=classes)
    averaged = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    warm = min(200, max(1, steps // 20))
    n = len(train)
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch, n),), generator=gen)
        x0 = train.images[idx]
        t = 1e-3 + (1 - 1e-3) * torch.rand(len(idx), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        label = train.labels[idx].clone()
        label[torch.rand(len(idx), generator=gen) < 0.1] = classes  # "any class"
        a, b = alpha_sigma(t)
        done = min(1.0, (step - warm) / max(1, steps - warm))
        rate = lr * (step + 1) / warm if step < warm else lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))
        for g in opt.param_groups:
            g["lr"] = rate
        loss = torch.nn.functional.mse_loss(model(a[:, None, None, None] * x0 + b[:, None, None, None] * noise,
                                                  t, label), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pa, pm in zip(averaged.parameters(), model.parameters()):
                pa.lerp_(pm, 1 - min(ema, (1 + step) / (10 + step)))
    return model, averaged


def test_training_is_the_documented_algorithm_bit_for_bit(digits8, tmp_path):
    """Seeded training is reproducible to the last bit, and is exactly the algorithm written out above."""
    kw = dict(width=8, layers=2, batch=8, lr=3e-3, ema=0.9, seed=5)
    net = train_network(digits8, tmp_path / "n", steps=7, conditional=True, save_every=3, device="cpu", **kw)
    model, averaged = reference_training(digits8, 7, **kw)
    state = torch.load(tmp_path / "n" / "train-0000007.pt", weights_only=True)
    for name, value in averaged.state_dict().items():
        assert torch.equal(net.model.state_dict()[name], value), name  # the EMA weights sampling uses
        assert torch.equal(state["ema"][name], value), name
    for name, value in model.state_dict().items():
        assert torch.equal(state["model"][name], value), name  # the trained weights resuming starts from


def test_stop_saves_a_checkpoint_that_resumes(digits8, tmp_path):
    seen = []
    net = tiny(digits8, tmp_path / "n", steps=10, report_every=1, progress=lambda p: seen.append(p.step),
               stop=lambda: len(seen) >= 4)
    assert net.steps_done == 4 and not net.finished
    assert "unfinished" in net.describe()
    assert load_network(tmp_path / "n").steps_done == 4
    assert tiny(digits8, tmp_path / "n", steps=10, resume=True).finished


def test_an_interrupted_run_keeps_its_progress(digits8, tmp_path):
    def interrupt(p):
        if p.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny(digits8, tmp_path / "n", steps=10, report_every=1, progress=interrupt)
    assert load_network(tmp_path / "n").steps_done == 5
    assert not list((tmp_path / "n").glob(".*"))  # no temporary files left


def test_a_save_that_dies_half_way_leaves_the_last_checkpoint(digits8, tmp_path, monkeypatch):
    folder = tmp_path / "n"
    tiny(digits8, folder, steps=3)
    before = snapshot(folder)
    real_save = torch.save

    def dying(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying)
    with pytest.raises(OSError):
        tiny(digits8, folder, steps=6, resume=True)
    monkeypatch.setattr(torch, "save", real_save)
    assert snapshot(folder) == before  # nothing overwritten, no partial file left
    assert load_network(folder).steps_done == 3


def test_training_never_overwrites_a_network(trained, digits8):
    before = snapshot(trained)
    with pytest.raises(ElsvizError, match="already holds a network"):
        tiny(digits8, trained)
    with pytest.raises(ElsvizError, match="width=16"):
        tiny(digits8, trained, steps=8, resume=True, width=16)
    assert snapshot(trained) == before


def test_the_network_is_a_denoiser_for_sample(trained, digits8):
    net = load_network(trained)
    engine = Engine(digits8, "bbels", "cpu")
    for seed in (0, 7):
        a, b = sample(net, seed=seed, steps=5), sample(engine, seed=seed, steps=5, k=3)
        assert torch.equal(a.x_init, b.x_init)  # the same noise for the same seed
        assert a.final.shape == (1, 1, 8, 8) and len(a.frames) == 4
    x, t = torch.randn(2, 1, 8, 8), 0.6
    post = net.denoise(x, t, k=5)
    al, be = math.cos(t / 1.008 * math.pi / 2), math.sin(t / 1.008 * math.pi / 2)
    assert torch.allclose(post.mean, (x - be * post.eps) / al, atol=1e-5)  # Tweedie from the predicted noise
    assert torch.equal(net.denoise(x, t, k=1).mean, post.mean)  # k plays no part
    with pytest.raises(ElsvizError, match="unconditional"):
        net.denoise(x, t, label=3)
    with pytest.raises(ElsvizError, match="channel"):
        net.denoise(torch.randn(1, 3, 8, 8), t)


def test_a_conditional_unet_trains_and_generates_one_class(digits8, tmp_path):
    net = train_network(digits8, tmp_path / "u", arch="unet", width=8, batch=8, steps=2, conditional=True)
    assert net.arch == "unet" and net.num_classes == 10
    assert load_network(tmp_path / "u").arch == "unet"
    out = sample(net, seed=0, steps=4, label=3)
    assert out.final.shape == (1, 1, 8, 8) and torch.isfinite(out.final).all()
    with pytest.raises(ElsvizError, match="divisible by 4"):
        train_network(load_dataset("digits", size=6, limit=10), tmp_path / "u6", arch="unet", steps=1)


# -- bad checkpoints ----------------------------------------------------------------------------------
def rewrite_config(folder: Path, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("dataset_"):
            config["dataset"][key[len("dataset_"):]] = value
        else:
            config[key] = value
    config["weights_sha256"] = sha(folder / config["weights"])
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture
def copy_of(trained, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(trained, folder)
    return folder


def test_weights_of_another_architecture_are_refused(copy_of, digits8, tmp_path):
    unet = train_network(digits8, tmp_path / "u", arch="unet", width=8, steps=1)
    shutil.copyfile(unet.path / unet.config["weights"], copy_of / "model-0000006.pt")
    with pytest.raises(ElsvizError, match="checksum"):  # config.json and weights from different folders
        load_network(copy_of)
    rewrite_config(copy_of)  # even with a matching checksum, the weights do not fit a ResNet
    with pytest.raises(ElsvizError, match="another architecture"):
        load_network(copy_of)


@pytest.mark.parametrize("change, message", [
    ({"dataset_shape": [3, 8, 8]}, "1-channel 8x8 images, but config.json says 3-channel"),
    ({"dataset_shape": [1, 16, 16]}, "1-channel 8x8 images, but config.json says 1-channel 16x16"),
    ({"width": 16}, "another width"),
])
def test_weights_for_other_channels_sizes_or_widths_are_refused(copy_of, change, message):
    rewrite_config(copy_of, **change)
    with pytest.raises(ElsvizError, match=message):
        load_network(copy_of)


def test_a_file_that_is_not_a_checkpoint_is_refused(copy_of):
    (copy_of / "model-0000006.pt").write_text("these are not weights")
    rewrite_config(copy_of)
    with pytest.raises(ElsvizError, match="not a PyTorch checkpoint"):
        load_network(copy_of)


class RunsCode:
    """Unpickling this would create a file: weights_only must refuse it before that can happen."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused(copy_of, tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"up.weight": RunsCode(str(marker))}, copy_of / "model-0000006.pt")
    rewrite_config(copy_of)
    with pytest.raises(ElsvizError, match="would run code"):
        load_network(copy_of)
    assert not marker.exists()


def test_missing_or_corrupt_configs_are_refused(copy_of, tmp_path):
    text = (copy_of / "config.json").read_text()
    (copy_of / "config.json").write_text(text[: len(text) // 2])  # cut short
    with pytest.raises(ElsvizError, match="corrupt"):
        load_network(copy_of)
    incomplete = json.loads(text)
    del incomplete["weights"]
    (copy_of / "config.json").write_text(json.dumps(incomplete))
    with pytest.raises(ElsvizError, match="lacks weights"):
        load_network(copy_of)
    (copy_of / "config.json").unlink()
    with pytest.raises(ElsvizError, match="no config.json"):
        load_network(copy_of)
    with pytest.raises(ElsvizError, match="a file, not a network folder"):
        load_network(copy_of / "model-0000006.pt")
    with pytest.raises(ElsvizError, match="does not exist"):
        load_network(tmp_path / "nowhere")


def test_a_run_killed_before_its_first_checkpoint_says_so(tmp_path):
    folder = tmp_path / "n"
    folder.mkdir()
    (folder / f".model-0000250.pt.tmp-{os.getpid()}").write_bytes(b"PK")
    with pytest.raises(ElsvizError, match="stopped before its first checkpoint"):
        load_network(folder)


# -- the agreement metric -------------------------------------------------------------------------------
def t(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_agreement_on_hand_made_outputs():
    u = t([1, 2, 3, 4])
    assert agreement(u, u) == pytest.approx(1.0)
    assert agreement(u, 3 * u - 5) == pytest.approx(1.0)  # brightness and contrast do not count
    assert agreement(u, -u) == pytest.approx(-1.0)
    assert agreement(t([1, -1, 1, -1]), t([1, 1, -1, -1])) == pytest.approx(0.0)  # orthogonal patterns
    # centred: [-1.5 -.5 .5 1.5] and [-1 -1 1 1]: (1.5 + .5 + .5 + 1.5) / (sqrt(5) * 2)
    assert agreement(u, t([0, 0, 1, 1])) == pytest.approx(4 / (2 * math.sqrt(5)))
    assert math.isnan(agreement(u, t([2, 2, 2, 2])))  # a flat output has no pattern
    with pytest.raises(ElsvizError, match="same shape"):
        agreement(u, t([1, 2, 3]))


def test_r2_on_hand_made_outputs():
    u = t([1, 2, 3, 4])
    assert r2(u, u) == pytest.approx(1.0)
    assert r2(u, t([2.5] * 4)) == pytest.approx(0.0)  # the target's mean explains nothing
    # residuals 1 each: SS_res = 4, SS_tot = 5
    assert r2(u, u + 1) == pytest.approx(1 - 4 / 5)
    assert r2(u, 3 * u - 5) < 0 < agreement(u, 3 * u - 5)  # r2 punishes what agreement forgives


# -- calibration ---------------------------------------------------------------------------------------
class KnownSchedule:
    """A "network" that is itself a bbELS machine, with its own k at every step."""

    def __init__(self, engine, ks):
        self.engine, self.ks, self.steps = engine, ks, len(ks)
        self.train, self.device = engine.train, engine.device

    def denoise(self, x, t, k=None, label=None):
        return self.engine.denoise(x, t, self.ks[round(t * self.steps)], label=label)


def test_calibration_recovers_the_schedule_of_a_machine(digits8):
    engine = Engine(digits8, "bbels", "cpu")
    known = [1, 1, 3, 3, 5, 7]  # k[0] unused; k[i] at step i
    cal = calibration(KnownSchedule(engine, known), Engine(digits8, "bbels", "cpu"), seeds=3, steps=6)
    assert cal.schedule[1:] == known[1:]
    assert cal.schedule[0] == cal.schedule[1]
    assert cal.ks == [1, 3, 5, 7]  # odd k up to the image size
    for i in range(1, 6):
        assert all(k == known[i] for k in cal.best[i])  # every sample agrees with its true k
    again = calibrate(KnownSchedule(engine, [3, 3, 3, 5, 5, 5]), engine, seeds=[4, 5], steps=6)
    assert again[1:] == [3, 3, 5, 5, 5]
    assert sample(engine, seed=0, steps=6, k=again).final.shape == (1, 1, 8, 8)  # usable as a schedule


def test_the_schedule_is_the_median_best_k_rounded_to_odd():
    from elsviz.analysis.compare import _odd_median

    assert _odd_median([3, 3, 5, 9, 9]) == 5
    assert _odd_median([3, 5]) == 5 and _odd_median([5, 7, 9, 11]) == 9  # halfway: up to the next odd k
    assert _odd_median([1, 1, 1, 15]) == 1


def test_calibration_is_saved_beside_the_network(copy_of, digits8):
    net = load_network(copy_of)
    assert net.schedule is None
    ks = calibrate(net, Engine(digits8, "bbels", "cpu"), seeds=2, steps=5)
    assert len(ks) == 5 and all(k % 2 == 1 and 1 <= k <= 7 for k in ks)
    save_schedule(net, {"schedule": ks, "steps": 5, "machine": "bbels"})
    assert load_network(copy_of).schedule == ks
    (copy_of / "schedule.json").write_text("{not json")
    with pytest.raises(ElsvizError, match="schedule.json is corrupt"):
        load_network(copy_of)


# -- comparison ----------------------------------------------------------------------------------------
def test_compare_runs_everything_from_the_same_noise(trained, digits8):
    net = load_network(trained)
    result = compare(net, digits8, seeds=[0, 5, 9], k=3, steps=5, network_steps=(5, 8))
    assert set(result.outputs) == {"network", "network-8", "bbels", "els", "ls", "is"}
    engine = Engine(digits8, "ls", "cpu")
    for s, seed in enumerate(result.seeds):  # each seed's noise is the one sample(..., seed=seed) draws
        alone = sample(engine, seed=seed, steps=5, k=3).final[0]
        assert torch.allclose(result.outputs["ls"][s], alone, atol=1e-5)
        assert torch.allclose(result.outputs["network-8"][s], sample(net, seed=seed, steps=8).final[0], atol=1e-5)
        assert result.agreement["network-8"]["is"][s] == pytest.approx(
            agreement(result.outputs["network-8"][s], result.outputs["is"][s]))
        assert result.r2["network"]["bbels"][s] == pytest.approx(
            r2(result.outputs["network"][s], result.outputs["bbels"][s]))
    assert result.main_network == "network-8"
    share = sum(b > i for b, i in zip(result.agreement["network-8"]["bbels"], result.agreement["network-8"]["is"])) / 3
    assert result.beats() == pytest.approx(share)
    # step by step: the posterior means of the two 5-step runs at steps 4 .. 1
    steps = result.step_agreement["bbels"]
    assert sorted(steps) == [1, 2, 3, 4]
    net_frame = sample(net, seed=5, steps=5).frame(2)
    machine_frame = sample(Engine(digits8, "bbels", "cpu"), seed=5, steps=5, k=3).frame(2)
    assert torch.allclose(result.means["bbels"][2][1], machine_frame.mean[0], atol=1e-5)
    assert steps[2][1] == pytest.approx(agreement(net_frame.mean[0], machine_frame.mean[0]), abs=1e-5)
    assert steps[1] == result.agreement["network"]["bbels"]  # step 1's mean is the output
    summary = result.summary()
    assert summary.startswith("3 seeds, median agreement") and "bbELS beats IS on" in summary
    assert json.loads(json.dumps(result.to_json()))["median_agreement"]["network"]["bbels"] == pytest.approx(
        sorted(result.agreement["network"]["bbels"])[1])


def test_compare_refuses_a_network_of_another_image_size(trained):
    with pytest.raises(ElsvizError, match="trained on 1-channel 8x8 images"):
        compare(load_network(trained), load_dataset("digits", limit=20), seeds=1, k=3)
    with pytest.raises(ElsvizError, match="no calibrated schedule"):
        compare(load_network(trained), seeds=1)


def test_noise_is_the_noise_of_sample(trained):
    net = load_network(trained)
    x = noise(net, [2, 3])
    assert torch.equal(x[1:], sample(net, seed=3, steps=2).x_init)


# -- command line ----------------------------------------------------------------------------------------
def test_train_calibrate_compare_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "net"
    common = ["--dataset", "digits", "-O", "size=8", "-O", "limit=40"]
    assert main(["train", *common, "--out", str(out), "--steps", "4", "--width", "8", "--layers", "1",
                 "--batch", "8", "--save-every", "2"]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    assert main(["train", *common, "--out", str(out), "--steps", "4"]) == 1  # refuses to overwrite
    assert "already holds a network" in capsys.readouterr().err
    assert main(["calibrate", str(out), "--seeds", "2", "--steps", "4"]) == 0
    line = capsys.readouterr().out
    assert "bbels schedule k[0..3] =" in line and (out / "schedule.json").is_file()
    grid = tmp_path / "grid.png"
    assert main(["compare", str(out), "--seeds", "2", "--steps", "4", "--network-steps", "4", "6",
                 "--figure", str(grid)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("2 seeds, median agreement") and grid.is_file()
    saved = json.loads((out / "compare.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["schedule"] == json.loads((out / "schedule.json").read_text())["schedule"]
    assert main(["compare", str(out), "--seeds", "1", "--figure", str(grid)]) == 1  # exists: --force to overwrite
    assert "exists already" in capsys.readouterr().err
    other = tmp_path / "k3.json"
    assert main(["compare", str(out), "--seeds", "1", "--steps", "4", "--network-steps", "4", "--k", "3",
                 "--json", str(other)]) == 0
    assert json.loads(other.read_text())["schedule"] == [3, 3, 3, 3]
    assert json.loads((out / "compare.json").read_text()) == saved  # the network's record: calibrated runs only


def test_config_records_what_resume_needs(trained):
    config = read_config(trained)
    assert config["training"]["steps"] == 6 and config["train_state"] == "train-0000006.pt"


def test_figures_of_a_comparison(trained, digits8):
    from elsviz import figures

    result = compare(load_network(trained), digits8, seeds=[0, 1], k=3, steps=4, network_steps=(4, 6))
    grid = figures.network_grid(result, target=40)  # seeds x [network (6 steps) | bbELS | ELS | IS]
    assert grid.width >= 4 * 40 and grid.height >= 2 * 40
    pair = figures.trajectory_pair(result, "bbels", 1, target=40)
    assert pair.width >= 3 * 40 and pair.height >= 2 * 40  # a column per step (3 .. 1), two rows
    fig = figures.agreement_scatter(result.agreement["network-6"]["is"], result.agreement["network-6"]["bbels"],
                                    result.seeds)
    diagonal, points = fig.data
    assert list(diagonal.x) == list(diagonal.y)  # the diagonal: equal agreement
    assert list(points.y) == result.agreement["network-6"]["bbels"] and list(points.customdata) == [0, 1]


def test_auto_threads_try_one_thread_and_restore_the_setting(digits8, tmp_path, monkeypatch):
    before = torch.get_num_threads()
    real = torch.set_num_threads
    real(2)
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    try:
        assert tiny(digits8, tmp_path / "n", steps=12, threads="auto").steps_done == 12
        assert calls[:2] == [2, 1] and calls[2] in (1, 2)  # all threads, one thread, then the faster
        assert calls[-1] == 2 and torch.get_num_threads() == 2  # torch's setting is back
    finally:
        real(before)
