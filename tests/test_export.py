"""Exports (elsviz.export) and the command line's `sample --mp4 --npz`: valid files, the right frames and sizes,
the same .npz and MP4 from the app's code and from the command line; the step player opens on the output."""
import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elsviz import Engine, export, figures, load_dataset
from elsviz.cli.commands import main
from elsviz.errors import ElsvizError
from elsviz.app.runs import RunSpec, run
from tests.test_app_lesson import media  # noqa: F401 - a fixture: the files the app hands the browser

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
    band = 2 * figures.frame_band(2 * export.SLIDE_TARGET + 8)  # the step above, the names below
    assert gif.size == (2 * export.SLIDE_TARGET + 8, export.SLIDE_TARGET + band)  # x_t | estimate, labelled


def test_every_exported_frame_says_its_step_t_and_k_and_what_each_picture_is(train, traj):
    """The GIF's and the video's pictures (figures.animation_frames) carry their labels: the step, t and k
    above x_t and the estimate (the same words as the app's step player), the pictures' names below."""
    frames = list(figures.animation_frames(traj, target=64))
    assert [f.i for f in traj.frames] == [4, 3, 2, 1]
    pair_w = 2 * 64 + 8
    band = figures.frame_band(pair_w)
    assert frames[0].size == (pair_w, 64 + 2 * band) and band > figures.frame_font_size(pair_w)

    def drawn(title, names, height=64):  # the labels alone, over a blank pair of pictures
        return np.asarray(figures.labelled_pair(Image.new("RGB", (pair_w, height), figures.BACKGROUND_RGB),
                                                title, names))

    for pic, f in zip(frames, traj.frames):
        arr = np.asarray(pic)
        top, bottom = arr[:band], arr[-band:]
        assert np.array_equal(top, drawn(f"step {f.i}   t = {f.t:.2f}   k = {f.k}", ("", ""))[:band])
        assert (top != figures.BACKGROUND_RGB).any()  # ink: the words are there
        name = "the output" if f.i == 1 else "estimate"
        assert np.array_equal(bottom, drawn("", ("noisy image x_t", name))[-band:])
        # the pictures between the labels are the step's x_t and estimate, untouched
        assert np.array_equal(arr[band:band + 64, :64], np.asarray(figures.picture(f.x[0].clamp(-1, 1), 64)))
        assert np.array_equal(arr[band:band + 64, 72:], np.asarray(figures.picture(f.mean[0], 64)))
    tops = [np.asarray(p)[:band] for p in frames]
    assert all(not np.array_equal(a, b) for a, b in zip(tops, tops[1:]))  # each step says its own
    # IS has no window: no k
    is_run = run(Engine(train, "is", "cpu"), RunSpec(machine="is", k=3, steps=3, seed=0))
    first = np.asarray(next(figures.animation_frames(is_run, target=64)))[:band]
    f = is_run.frames[0]
    assert np.array_equal(first, drawn(f"step {f.i}   t = {f.t:.2f}", ("", ""))[:band])


def video(data: bytes):
    """(codec name, pixel format, frames per second, [every decoded frame as uint8 RGB]) of an MP4."""
    import av

    with av.open(io.BytesIO(data), format="mp4") as box:
        stream = box.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in box.decode(stream)]
        return stream.codec_context.name, stream.codec_context.pix_fmt, stream.average_rate, frames


def test_mp4_for_slides_is_h264_and_shows_the_gifs_pictures_in_order_for_as_long(traj):
    data = export.run_mp4(traj)
    assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")  # MP4, index first: plays while loading
    codec, pix_fmt, fps, frames = video(data)
    assert codec == "h264" and pix_fmt == "yuv420p" and fps == export.VIDEO_FPS
    pictures = [np.asarray(p, dtype=np.int16) for p in figures.animation_frames(traj, target=export.VIDEO_TARGET)]
    band = 2 * figures.frame_band(2 * 480 + 8)  # the step above, the names below
    assert len(pictures) == 4 and pictures[0].shape == (480 + band, 2 * 480 + 8, 3)  # 16x16 at 30x, side by side
    assert frames[0].shape == pictures[0].shape
    # each decoded frame is one of the GIF's pictures: in order, 220 ms a step, the output held 1.5 s
    shown = []
    for frame in frames:
        errors = [np.abs(frame.astype(np.int16) - p).mean() for p in pictures]
        shown.append(int(np.argmin(errors)))
        assert errors[shown[-1]] < 1.5, errors  # near-lossless: the squares stay sharp, the greys right
    assert shown == [0] * 11 + [1] * 11 + [2] * 11 + [3] * 75
    assert len(frames) / export.VIDEO_FPS == pytest.approx((3 * figures.FRAME_MS + figures.HOLD_MS) / 1000)


def test_an_odd_sized_picture_becomes_an_even_video(train):
    traj = run(Engine(train, "bbels", "cpu"), RunSpec(machine="bbels", k=3, steps=2, seed=1, size=(9, 7)))
    _, pix_fmt, _, frames = video(export.run_mp4(traj, target=45))  # 45 x 35 pictures: 35 + 8 + 35 = 78 wide
    assert figures.frame_font_size(78) == 12  # labels of 12 px: two bands of 12 + 2 x 4 px, 45 + 40 = 85 tall
    assert pix_fmt == "yuv420p" and frames[0].shape == (86, 78, 3)
    assert (frames[0][-1] > 245).all()  # the added row is the page's white background


def test_mp4_to_a_file_is_written_all_or_none(tmp_path, traj, monkeypatch):
    out = tmp_path / "run.mp4"
    data = export.run_mp4(traj, path=out)
    assert out.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["run.mp4"]
    frames, written = figures.animation_frames, []

    def half_way(*args, **kwargs):  # the encoder has some pictures, then the run's pictures fail
        pictures = frames(*args, **kwargs)
        yield next(pictures)
        yield next(pictures)
        raise OSError("No space left on device")

    def rename_fails(src, dst):  # the whole file is written, then it cannot be moved into place
        written.append(Path(src).stat().st_size)
        raise OSError("Read-only file system")

    with monkeypatch.context() as m:
        m.setattr(figures, "animation_frames", half_way)
        with pytest.raises(OSError, match="No space"):
            export.run_mp4(traj, path=out)
    monkeypatch.setattr(export.os, "replace", rename_fails)
    with pytest.raises(OSError, match="Read-only"):
        export.run_mp4(traj, path=tmp_path / "other.mp4")
    assert written == [len(data)]  # it was there, whole, under another name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.mp4"] and out.read_bytes() == data


def test_without_pyav_the_video_says_how_to_get_it_and_the_gif_still_works(traj, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    for make in (export.video_codec, lambda: export.run_mp4(traj)):
        with pytest.raises(ElsvizError, match="pip install av"):
            make()
    assert Image.open(io.BytesIO(export.run_gif(traj))).n_frames == 4


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


def test_cli_sample_mp4_is_the_apps_video(tmp_path, traj):
    out = tmp_path / "run"
    assert main(["sample", "digits", "-O", "limit=20", "--k", "3", "--steps", "5", "--seed", "4", "--device", "cpu",
                 "-o", str(out), "--mp4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["final.png", "provenance.png", "run.gif", "run.mp4"]
    assert (out / "run.mp4").read_bytes() == export.run_mp4(traj)  # the same figure code, the same encoder settings


def test_download_names_say_which_run_and_differ_for_any_other():
    """One name per picture of a run: the set (and its size), machine, k or schedule, steps, seed, class,
    output size and step; two runs that differ in any of them never get the same file name."""
    from dataclasses import replace

    class Set:  # an ImageSet as download_name sees it: a name and a length
        def __init__(self, name, n):
            self.name, self.n = name, n

        def __len__(self):
            return self.n

    digits = Set("digits", 1797)
    base = RunSpec(machine="bbels", k="mnist-resnet", steps=20, seed=0)
    name = export.download_name("lesson-mosaic", "png", train=digits, spec=base)
    assert name == "lesson-mosaic_digits-n1797_bbels-mnist-resnet-20steps-seed0.png"
    assert export.download_name("lesson-mosaic", "png", train=digits, spec=base) == name  # the same run: the same
    variants = {
        "seed": dict(spec=replace(base, seed=1)),
        "steps": dict(spec=replace(base, steps=10)),
        "machine": dict(spec=replace(base, machine="els")),
        "k": dict(spec=replace(base, k=5)),
        "other k": dict(spec=replace(base, k=7)),
        "a table": dict(spec=replace(base, k=(3,) * 10 + (5,) * 10)),
        "another table": dict(spec=replace(base, k=(3,) * 9 + (5,) * 11)),
        "class": dict(spec=replace(base, label=3)),
        "size": dict(spec=replace(base, size=(24, 40))),
        "subset": dict(train=Set("digits", 150)),
        "set": dict(train=Set("hands", 1797)),
        "step": dict(step=4),
    }
    names = {"base": name}
    for what, change in variants.items():
        args = dict(train=digits, spec=base) | change
        names[what] = export.download_name("lesson-mosaic", "png", **args)
    assert len(set(names.values())) == len(names), names
    assert names["seed"].endswith("seed1.png") and names["step"].endswith("_step4.png")
    assert "k5" in names["k"] and "class3" in names["class"] and "24x40" in names["size"]
    assert export.download_name("run", "gif", train="photos", spec=replace(base, machine="is", k=5)) == \
        "run_photos_is-20steps-seed0.gif"  # IS: no window, so no k
    for n in names.values():  # safe on every system: letters, digits, '-', '_' and the one '.'
        stem, ext = n.rsplit(".", 1)
        assert ext == "png" and stem.replace("-", "").replace("_", "").isalnum() and stem.isascii()
        assert len(n) < 120
    assert export.download_name("what: a / b", ".NPZ", train="my set (v2)") == "what-a-b_my-set-v2.npz"


def test_every_download_button_of_the_app_is_named_by_download_name():
    """Each st.download_button in pages/ gets its file name from export.download_name (directly, or through
    a function of the page that calls it), so no two runs' downloads share a name."""
    import ast

    pages = Path(__file__).resolve().parents[1] / "app_pages"
    found = 0

    def names_by_download_name(tree) -> set[str]:  # the page's own functions that return download_name(...)
        return {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                and any(isinstance(c, ast.Call) and getattr(c.func, "attr", None) == "download_name"
                        for c in ast.walk(f))}

    for page in sorted(pages.glob("*.py")):
        tree = ast.parse(page.read_text())
        helpers = names_by_download_name(tree)
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "download_button"):
                continue
            found += 1
            value = next((k.value for k in call.keywords if k.arg == "file_name"), None)
            ok = isinstance(value, ast.Call) and (
                (isinstance(value.func, ast.Attribute) and value.func.attr == "download_name")
                or (isinstance(value.func, ast.Name) and value.func.id in helpers))
            assert ok, f"{page.name}:{call.lineno}: file_name={ast.unparse(value) if value else None}"
    assert found >= 7  # reverse diffusion 4, provenance 2, locality 1, lesson 1 (at least)


def test_two_seeds_download_under_two_names_that_say_which_run(media):
    """The same page's downloads from two runs never share a file name (they used to: one seed's file
    overwrote the other's in the Downloads folder)."""
    from elsviz.ui.data import DEFAULT_SET
    from tests.test_app import app, ok
    from tests.test_app_lesson import downloads

    names = {}
    for seed in (0, 1):
        at = ok(app(steps=6, seed=seed))
        names[seed] = {key: name for key, (name, _) in downloads(at, media).items()}
    for key in ("dl_gif", "dl_png", "dl_npz"):
        first, second = names[0][key], names[1][key]
        assert first != second, key
        assert first.startswith((f"run_{DEFAULT_SET}-n150_", f"output_{DEFAULT_SET}-n150_")), first
        assert "bbels-k5-6steps-seed0" in first
        assert "seed1" in second
