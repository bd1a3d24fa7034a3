"""Downloads in the app (AppTest): each page offers what it shows, and the bytes are valid files of the right size."""
import io

import numpy as np
from PIL import Image

from elsviz import export, figures
from tests.test_app import app, ok
from tests.test_app_lesson import downloads, image_bytes, media  # noqa: F401 - media: a fixture
from tests.test_export import video


def test_reverse_diffusion_offers_gif_mp4_png_and_npz_of_its_run(media):
    at = ok(app(steps=6))
    files = downloads(at, media)
    assert {"dl_gif", "dl_mp4", "dl_png", "dl_npz"} <= set(files)
    name, gif = files["dl_gif"]
    gif = Image.open(io.BytesIO(gif))
    assert name.endswith(".gif") and gif.format == "GIF"
    wide = 2 * export.SLIDE_TARGET + 8  # x_t | estimate, the step's labels above and below (figures.frame_band)
    assert gif.n_frames == 5 and gif.size == (wide, export.SLIDE_TARGET + 2 * figures.frame_band(wide))
    name, mp4 = files["dl_mp4"]
    codec, _, _, frames = video(mp4)
    assert name == files["dl_gif"][0][:-4] + ".mp4" and codec == "h264"
    wide = 2 * export.VIDEO_TARGET + 8
    assert len(frames) == 4 * 11 + 75 and frames[0].shape == (export.VIDEO_TARGET + 2 * figures.frame_band(wide), wide, 3)
    assert downloads(at, media)["dl_mp4"][1] is mp4  # made once, kept with the run
    png = Image.open(io.BytesIO(files["dl_png"][1]))
    assert png.format == "PNG" and png.size == (640, 640)
    data = np.load(io.BytesIO(files["dl_npz"][1]), allow_pickle=False)
    assert "README" in data.files and data["mean"].shape == (5, 1, 1, 16, 16) and list(data["step"]) == [5, 4, 3, 2, 1]
    assert str(data["spec"]) == "bbELS, k=5, 6 steps, seed 0"
    # the result first: the first picture on the page is the output, drawn large
    first = np.asarray(Image.open(io.BytesIO(image_bytes(at, media)[0])).convert("RGB"))
    side = first.shape[0] // 16
    assert side * 16 >= 384  # large
    assert np.array_equal(first[side // 2::side, side // 2::side], figures.to_rgb(data["final"][0]))

def test_provenance_and_locality_offer_their_pictures(media):
    at = ok(app(steps=6))
    at.switch_page("app_pages/provenance.py")
    ok(at.run())
    files = downloads(at, media)
    png = Image.open(io.BytesIO(files["dl_provenance"][1]))
    assert png.format == "PNG" and png.size == (640, 640)
    assert np.load(io.BytesIO(files["dl_npz"][1]), allow_pickle=False)["source_index"].shape == (5, 1, 16, 16)

    at.switch_page("app_pages/locality.py")
    ok(at.run())
    start = [b for b in at.button if b.label.startswith("Run the")]
    if start:
        start[0].click()
        ok(at.run())
    files = downloads(at, media)
    strip = Image.open(io.BytesIO(files["dl_four-machines"][1]))
    assert strip.format == "PNG" and strip.width > 4 * 160 and files["dl_four-machines"][0].endswith(".png")


def test_without_pyav_the_page_says_how_to_get_it_and_still_offers_the_gif(media, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    at = ok(app(steps=6))
    buttons = {b.proto.id.split("-", 2)[-1]: b for b in at.get("download_button")}
    assert buttons["dl_mp4"].proto.disabled and "pip install av" in buttons["dl_mp4"].proto.help
    assert any("pip install av" in c.value for c in at.caption)
    assert Image.open(io.BytesIO(downloads(at, media)["dl_gif"][1])).n_frames == 5
