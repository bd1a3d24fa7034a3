"""Exports (elsviz.export) and the command line's `sample --npz`: valid files, the right frames and sizes,
the same .npz from the app's code and from the command line; the step player opens on the output."""
import io
import math

import numpy as np
import pytest
from PIL import Image

from elsviz import Engine, export, figures, load_dataset
from elsviz.cli import main
from elsviz.errors import ElsvizError
from elsviz.runs import RunSpec, run

SPEC = RunSpec(machine="bbels", k=3, steps=5, seed=4)


@pytest.fixture(scope="module")
def train():
    return load_dataset("digits", limit=20, seed=0)


@pytest.fixture(scope="module")
def traj(train):
    return run(Engine(train, "bbels", "cpu"), SPEC)


def test_npz_holds_every_step_and_says_what_each_array_is(traj):
    data = np.load(io.BytesIO(export.npz_bytes(traj, spec=SPEC, dataset="digits")), allow_pickle=False)
    readme = str(data["README"])
    for name in data.files:  # every array is described
        assert f"\n{name} " in "\n" + readme, name
    assert list(data["step"]) == [4, 3, 2, 1] and np.allclose(data["t"], [0.8, 0.6, 0.4, 0.2])
    assert data["x"].shape == data["mean"].shape == (4, 1, 1, 16, 16)
    assert data["source_pos"].shape == (4, 1, 16, 16, 2) and data["source_index"].dtype == np.int64
    assert np.array_equal(data["mean"][-1], data["final"]) and np.array_equal(data["final"], traj.final.numpy())
    assert str(data["spec"]) == "bbELS, k=3, 5 steps, seed 4" and int(data["seed"]) == 4 and int(data["label"]) == -1


def test_gif_for_slides_has_a_frame_per_step_at_slide_size(traj):
    gif = Image.open(io.BytesIO(export.run_gif(traj)))
    assert gif.format == "GIF" and gif.n_frames == 4
    assert gif.size == (2 * export.SLIDE_TARGET + 8, export.SLIDE_TARGET)  # x_t | estimate


def test_png_and_provenance_png(traj):
    png = Image.open(io.BytesIO(export.provenance_png(traj, target=640)))
    assert png.format == "PNG" and png.size == (640, 640)
    with pytest.raises(ElsvizError, match="PIL image"):
        export.png_bytes(b"not a picture")


def test_max_entropy_is_log_of_the_keys_and_bounds_every_run(train, traj):
    assert export.max_entropy("is", 20, (1, 16, 16)) == pytest.approx(math.log(20))
    top = export.max_entropy("bbels", len(train), train.shape)
    assert top == pytest.approx(math.log(20 * 16 * 16))
    assert max(float(f.entropy.max()) for f in traj.frames) <= top + 1e-4


def test_the_player_opens_on_the_output_with_a_fixed_entropy_scale(traj):
    fig = figures.animation_figure(traj, entropy_max=7.0)
    assert fig.layout.sliders[0].active == len(traj.frames) - 1  # step 1, not pure noise
    assert fig.layout.title.text.startswith("step 1 ")
    assert np.array_equal(np.asarray(fig.data[1].z), figures.to_rgb(traj.final[0]))  # what is drawn first: the output
    assert fig.data[2].zmax == 7.0 and all(f.data[2].zmax == 7.0 for f in fig.frames)
    assert list(fig.layout.updatemenus[0].buttons[0].args[0]) == ["4", "3", "2", "1"]  # Play runs from the noise
    assert "k = " not in figures.animation_figure(traj, show_k=False).layout.title.text  # IS has no window


def test_cli_sample_npz_is_the_apps_file(tmp_path, train, traj):
    out = tmp_path / "run"
    assert main(["sample", "digits", "-O", "limit=20", "--k", "3", "--steps", "5", "--seed", "4", "--device", "cpu",
                 "-o", str(out), "--npz"]) == 0
    cli = np.load(out / "run.npz", allow_pickle=False)
    app = np.load(io.BytesIO(export.npz_bytes(traj, spec=SPEC, dataset=train.name)), allow_pickle=False)
    assert sorted(cli.files) == sorted(app.files)
    for name in app.files:
        assert np.array_equal(cli[name], app[name]), name
    assert Image.open(out / "run.gif").n_frames == 4
    # the npz is one of the files written all or none: it exists now, so a second run is refused without --force
    assert main(["sample", "digits", "-O", "limit=20", "--k", "3", "--steps", "5", "-o", str(out), "--npz"]) == 1
