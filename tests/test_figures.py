"""elsviz.figures: sharp pixel pictures, the provenance overlay, the animation and the strips."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from elsviz import Engine, ImageSet, figures, sample
from elsviz.errors import ElsvizError
from elsviz.analysis.provenance import seams


@pytest.fixture(scope="module")
def traj():
    """A short bbELS run on a tiny random set (8x8 grey, 6 images, 5 steps)."""
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(6, 1, 8, 8, generator=g) > 0.5).float() * 2 - 1
    engine = Engine(ImageSet(images), machine="bbels", device="cpu")
    return sample(engine, steps=5, k=3, seed=0)


def test_to_rgb_maps_the_value_range_and_greys():
    img = torch.tensor([[[-1.0, 0.0], [1.0, 0.5]]])  # [1, 2, 2]
    rgb = figures.to_rgb(img)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[1, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [128, 128, 128]
    colour = figures.to_rgb(torch.stack([torch.full((2, 2), -1.0), torch.zeros(2, 2), torch.ones(2, 2)]))
    assert colour[0, 0].tolist() == [0, 128, 255]


def test_pictures_are_enlarged_sharp_not_smoothed():
    g = torch.Generator().manual_seed(3)
    img = torch.rand(3, 5, 7, generator=g) * 2 - 1
    pic = figures.picture(img, target=140)
    assert pic.size == (7 * 20, 5 * 20)
    arr = np.asarray(pic)
    # nearest neighbour: every 20x20 block is one colour, and no colour is invented
    blocks = arr.reshape(5, 20, 7, 20, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) == len(np.unique(figures.to_rgb(img).reshape(-1, 3), axis=0))


def test_provenance_picture_colours_sources_hatches_nothing_on_shared_and_draws_seams():
    img = torch.zeros(1, 4, 4)
    idx = torch.zeros(4, 4, dtype=torch.int64)
    idx[:, 2:] = 1
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    pos = torch.stack([rows, cols], -1)
    count = torch.ones(4, 4, dtype=torch.int64)
    count[3, :] = 12  # the bottom row is shared
    pic = np.asarray(figures.provenance_picture(img, idx, pos, count, target=64, alpha=1.0, mark=(0, 0)))
    s = 16
    assert pic.shape == (64, 64, 3)
    centre = lambda i, j: pic[i * s + s // 2 - 3, j * s + s // 2 + 3]  # off the hatch diagonal
    assert tuple(centre(1, 0)) == figures.source_colour(0)
    assert tuple(centre(1, 3)) == figures.source_colour(1)
    assert figures.source_colour(0) != figures.source_colour(1)
    shared = centre(3, 0)
    assert shared[0] == shared[1] == shared[2]  # grey: no source named
    # the seam between columns 1 and 2 is white on the attributed rows, absent on the shared row
    assert tuple(pic[s + 5, 2 * s]) == figures.SEAM_RGB
    assert tuple(pic[3 * s + 5, 2 * s]) != figures.SEAM_RGB
    assert tuple(pic[0, 0]) == (255, 60, 60)  # the marked pixel's outline
    plain = np.asarray(figures.provenance_picture(img, idx, pos, count, target=64, colour=False, draw_seams=False))
    assert (plain == 128).all()


def test_key_in_image_outlines_the_window_clipped_at_the_border():
    img = torch.full((1, 10, 10), -1.0)
    pic = np.asarray(figures.key_in_image(img, 0, 9, 5, target=100))  # zoom 10
    yellow = np.all(pic == (255, 200, 0), axis=-1)
    ys, xs = np.nonzero(yellow)
    assert ys.min() == 0 and xs.max() == 99  # clipped at the top and right border
    assert xs.min() == 70 and ys.max() == 29  # columns 7..9, rows 0..2
    card = figures.key_card(img, 5, 5, 3, target=100)
    assert card.height == 100 and card.width > 100
    whole = np.asarray(figures.key_card(img, 5, 5, None, target=100))  # IS: the whole image is the key
    assert whole.shape == (100, 100, 3) and not np.all(whole == (255, 200, 0), axis=-1).any()
    assert tuple(whole[50, 50]) == (255, 60, 60)


def test_animation_figure_has_a_frame_per_step_and_play_controls(traj):
    fig = figures.animation_figure(traj)
    assert [f.name for f in fig.frames] == ["4", "3", "2", "1"]
    assert [type(t).__name__ for t in fig.data] == ["Image", "Image", "Heatmap"]
    assert fig.data[2].zsmooth is False
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert any("Play" in s for s in labels) and any("Pause" in s for s in labels)
    assert [s.label for s in fig.layout.sliders[0].steps] == ["4", "3", "2", "1"]
    last = fig.frames[-1]
    assert "t = 0.20" in last.layout.title.text and "k = 3" in last.layout.title.text
    # the middle panel of the last frame is the output, pixel for pixel
    assert np.array_equal(np.asarray(last.data[1].z), figures.to_rgb(traj.final[0]))
    assert fig.layout.yaxis.range == (7.5, -0.5)  # row 0 on top, as in an image


def test_animation_gif_loops_over_the_steps(traj):
    gif = Image.open(io.BytesIO(figures.animation_gif(traj, target=64)))
    assert gif.format == "GIF" and gif.n_frames == len(traj.frames)
    assert gif.info.get("loop") == 0


def test_schedule_svg_draws_k_against_step():
    """Step 3 (noisy) on the left, step 1 on the right, larger k higher; a point per step names its step and k."""
    import xml.etree.ElementTree as ET

    svg = ET.fromstring(figures.schedule_svg([3, 3, 5, 7]))
    ns = "{http://www.w3.org/2000/svg}"
    points = [(float(c.get("cx")), float(c.get("cy")), c.find(f"{ns}title").text) for c in svg.iter(f"{ns}circle")]
    assert [p[2] for p in points] == ["step 3: k = 7", "step 2: k = 5", "step 1: k = 3"]
    assert points[0][0] < points[1][0] < points[2][0]  # noisy -> clean, left to right
    assert points[0][1] < points[1][1] < points[2][1]  # k = 7 above 5 above 3 (SVG's y grows downwards)
    with pytest.raises(ElsvizError):
        figures.schedule_svg([5])


def test_strip_and_difference():
    a, b = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    b[0, 0, 0] = 1.0
    st = figures.strip([a, b], ["a", "b"], target=40, gap=10)
    assert st.width == 2 * 40 + 3 * 10
    diff = np.asarray(figures.difference_picture(a, b, target=40))
    assert diff[5, 5].sum() > diff[35, 35].sum()  # the changed pixel is brighter than an unchanged one
    wrapped = figures.strip([a, b], ["a long caption that cannot fit under one small picture", "b"], target=40)
    assert wrapped.height > st.height  # wrapped onto several lines, not drawn over the neighbour


def test_seams_in_the_picture_match_the_runs_helper(traj):
    f = traj.frames[-1]
    pic = np.asarray(figures.provenance_picture(f.mean[0], f.source_index[0], f.source_pos[0], f.source_count[0],
                                                target=80, colour=False))
    vertical, _ = seams(f.source_index[0], f.source_pos[0], f.source_count[0])
    s = 10
    for i, j in zip(*np.nonzero(vertical.numpy())):
        assert tuple(pic[i * s + s // 2, (j + 1) * s]) == figures.SEAM_RGB


def test_weight_text_never_rounds_a_weight_to_zero():
    assert figures.weight_text(0.9071) == "0.907"
    assert figures.weight_text(1e-9) == "< 0.001"


def _drawn_json(fig) -> str:
    """What Streamlit sends to the browser of a figure, less the template (the theme's, in the app)."""
    data = json.loads(fig.to_json())
    data.get("layout", {}).pop("template", None)
    return json.dumps(data)


def test_no_figure_carries_a_colour_streamlit_would_swap_for_a_theme_colour(traj):
    """Streamlit replaces the strings #000001 .. #000040 in a figure's JSON by theme colours (in the browser,
    whatever the theme): a scale written with one of them (Magma starts at #000004) would be drawn wrong
    where its meaning matters most (0 nats, settled). tests/test_browser_colours.py sees it drawn."""
    assert figures.STREAMLIT_PLACEHOLDERS.search('{"colorscale": [[0.0, "#000004"]]}')  # the pattern finds one
    rows = [{"step": 2, "image": 4, "share": 1.0, "weight": 0.3, "entropy": 1.0, "switched": False},
            {"step": 1, "image": None, "share": 0.5, "weight": 0.9, "entropy": 0.1, "switched": True}]
    made = {
        "animation": figures.animation_figure(traj, entropy_max=5.0),
        "schedules": figures.schedules_figure({"a": [3, 3, 5], "b": [3, 5, 7]}, highlight=["a"]),
        "scatter": figures.agreement_scatter([0.1, 0.5], [0.3, 0.7], [0, 1]),
        "step agreement": figures.step_agreement_figure({"bbELS": [(2, 0.5), (1, 0.9)]}),
        "histogram": figures.finger_histogram({"k = 5": {5: 3, 6: 1}, "k = 9": {5: 4}, "IS": {5: 4}}),
        "rate": figures.extra_rate_figure([(5, 0.5, 8), (9, 0.25, 8)], reference=0.0),
        "birth": figures.birth_figure([(9, 5), (7, 6)], born=(8, 7)),
        "timeline": figures.timeline_figure(rows),
    }
    for name, fig in made.items():
        found = figures.STREAMLIT_PLACEHOLDERS.findall(_drawn_json(fig))
        assert not found, f"{name}: {sorted(set(found))}"
    heat = made["animation"].data[2]
    assert heat.colorscale[0][1] == "rgb(0, 0, 4)" and heat.colorscale[-1][1] == "rgb(252, 253, 191)"  # Magma
    assert all(tuple(f.data[2].colorscale) == tuple(heat.colorscale) for f in made["animation"].frames)


def test_captions_use_a_scalable_font_of_the_size_asked_for():
    """Labels are drawn in Pillow's scalable font (Aileron), not its fixed 11-pixel bitmap font, whose
    thin strokes read "k = 7" as "k = /": the ink of a caption grows with font_size."""
    blank = torch.zeros(1, 4, 4)

    def ink_height(font_size):
        pic = figures.strip([blank], ["k = 7"], target=200, font_size=font_size)
        text = np.asarray(pic.convert("L"))[200 + 10:]  # below the picture
        rows = np.nonzero((text < 160).any(1))[0]
        return rows.max() - rows.min() + 1

    assert isinstance(figures._font(15), ImageFont.FreeTypeFont) and figures._font(15).size == 15
    for size in (15, 30):  # the ink of "k" (ascender to baseline) is about 3/4 of the font's size
        assert 0.6 * size <= ink_height(size) <= 0.9 * size, (size, ink_height(size))
    assert 1.8 <= ink_height(30) / ink_height(15) <= 2.2


def test_a_marked_pixel_in_the_last_row_and_column_is_framed_whole_inside_the_picture():
    """The frame around the selected pixel is drawn inside the picture: at the right and bottom border its
    outer side is the picture's last column and row of pixels, not lost past the edge."""
    img = torch.zeros(1, 4, 4)
    idx = torch.zeros(4, 4, dtype=torch.int64)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    pos, count = torch.stack([rows, cols], -1), torch.ones(4, 4, dtype=torch.int64)
    red = (255, 60, 60)
    for mark in ((3, 3), (0, 3), (3, 0)):
        pic = np.asarray(figures.provenance_picture(img, idx, pos, count, target=64, mark=mark))
        s = 16
        top, left = mark[0] * s, mark[1] * s
        for y, x in ((top, left + s // 2), (top + s - 1, left + s // 2), (top + s // 2, left), (top + s // 2, left + s - 1)):
            assert tuple(pic[y, x]) == red, (mark, y, x)  # all four sides, the outer ones on the border


def test_schedules_figure_names_the_highlighted_lines_and_the_rest_once():
    """The legend stays short (it sits above the plot, wrapping on a phone): the bold lines by name, the grey
    ones as one entry; each grey line still names itself under the pointer."""
    fig = figures.schedules_figure({"calibrated": [3, 3, 5], "mnist-resnet": [3, 5, 7], "cifar10-unet": [3, 3, 3]},
                                   highlight=["calibrated"])
    shown = [t.name for t in fig.data if t.showlegend is not False]
    assert shown == ["calibrated", "the paper's schedules"]
    assert "mnist-resnet" in fig.data[1].hovertemplate and "cifar10-unet" in fig.data[2].hovertemplate
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y > 1  # above the plot
