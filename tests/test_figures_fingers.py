"""The figures of the "Extra fingers" page: a provenance overlay that stays readable at 32x32 (the
silhouette's outline, sources on the hand only, pieces as outlines), the fingers found, the gallery
(a click maps to its cell), and the plots of the study, the branch test and the timeline."""
import json

import numpy as np
import pytest
import torch

from elsviz import figures
from elsviz.errors import ElsvizError
from elsviz.app.fingers import cell_at


def blob():
    """An 8x8 picture: a white 4x4 square (rows 2-5, cols 2-5) on black, copied from two images: the
    square's left half from image 1, its right half from image 2, the background shared."""
    img = -torch.ones(1, 8, 8)
    img[0, 2:6, 2:6] = 1.0
    idx = torch.ones(8, 8, dtype=torch.int64)
    idx[:, 4:] = 2
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    pos = torch.stack([rows, cols], -1)
    cnt = torch.full((8, 8), 5, dtype=torch.int64)
    cnt[2:6, 2:6] = 1
    return img, idx, pos, cnt


def cell(pic, s, i, j, di=0.5, dj=0.5):
    """The RGB of pixel (i, j) of an image drawn s times larger, at (di, dj) of the way into it."""
    return tuple(np.asarray(pic)[int((i + di) * s), int((j + dj) * s)].tolist())


def test_the_outline_is_drawn_just_outside_the_silhouette_and_leaves_it_whole():
    img, idx, pos, cnt = blob()
    pic = figures.provenance_picture(img, idx, pos, cnt, target=80, outline=True, draw_seams=False)  # 10 px a pixel
    assert cell(pic, 10, 3, 1, dj=0.9) == figures.OUTLINE_RGB  # left of the square, on the background pixel
    assert cell(pic, 10, 1, 3, di=0.9) == figures.OUTLINE_RGB  # above it
    assert cell(pic, 10, 3, 1, dj=0.2) != figures.OUTLINE_RGB  # the rest of that background pixel
    plain = figures.provenance_picture(img, idx, pos, cnt, target=80, draw_seams=False)
    assert cell(pic, 10, 3, 2, dj=0.1) == cell(plain, 10, 3, 2, dj=0.1)  # the square's own pixels untouched


def test_within_keeps_the_background_plain_and_edges_outline_pieces_in_their_colour():
    img, idx, pos, cnt = blob()
    cnt[:] = 1  # every pixel attributed: without `within` the background would be tinted too
    hand = (img[0] > 0).numpy()
    tinted = figures.provenance_picture(img, idx, pos, cnt, target=80, draw_seams=False)
    only = figures.provenance_picture(img, idx, pos, cnt, target=80, draw_seams=False, within=hand)
    assert cell(tinted, 10, 0, 0) != (0, 0, 0) and cell(only, 10, 0, 0) == (0, 0, 0)
    assert cell(only, 10, 3, 3) == cell(tinted, 10, 3, 3)
    edges = figures.provenance_picture(img, idx, pos, cnt, target=80, draw_seams=False, within=hand, style="edges",
                                       alpha=1.0)
    assert cell(edges, 10, 3, 3) == (255, 255, 255)  # inside a piece: the picture itself, untinted
    assert cell(edges, 10, 3, 3, dj=0.95) == figures.source_colour(1)  # where it meets image 2's piece
    assert cell(edges, 10, 3, 4, dj=0.05) == figures.source_colour(2)
    with pytest.raises(ElsvizError, match="style"):
        figures.provenance_picture(img, idx, pos, cnt, style="stripes")
    with pytest.raises(ElsvizError, match="within"):
        figures.provenance_picture(img, idx, pos, cnt, within=np.ones((3, 3), bool))


def test_fingers_picture_colours_each_finger_and_dims_the_rest():
    img, *_ = blob()
    regions = np.zeros((8, 8), np.int32)
    regions[2, 2:4] = 1
    regions[5, 4:6] = 2
    pic = figures.fingers_picture(img, regions, target=80)
    assert cell(pic, 10, 2, 2) == figures.finger_colour(1) and cell(pic, 10, 5, 5) == figures.finger_colour(2)
    assert cell(pic, 10, 3, 3) == (115, 115, 115)  # the palm, dimmed
    assert figures.finger_colour(1) != figures.finger_colour(2)


def test_a_click_on_a_gallery_picture_opens_that_picture():
    imgs = [torch.full((1, 8, 8), v) for v in np.linspace(-1, 1, 11)]
    pic = figures.gallery(imgs, [f"seed {n}" for n in range(11)], [n == 4 for n in range(11)], columns=4, target=40,
                          selected=6)
    cols, rows = 4, 3
    cw, ch = pic.width // cols, pic.height // rows
    assert pic.width == cols * cw and pic.height == rows * ch
    for n in range(11):
        x, y = (n % cols) * cw + cw / 2, (n // cols) * ch + 20
        assert cell_at({"x": x, "y": y, "width": pic.width, "height": pic.height}, 11, cols) == n
    arr = np.asarray(pic)
    assert tuple(arr[6 - 2, cw * 0 + 20]) != figures.FLAG_RGB  # an ordinary picture: no frame
    assert tuple(arr[6 - 2, cw * 0 + 20 + 0]) == figures.BACKGROUND_RGB
    assert tuple(arr[6 - 2, cw * 0 + 20]) == figures.BACKGROUND_RGB
    assert figures.FLAG_RGB in {tuple(v) for v in arr[ch * 1 + 6 - 2, :cw].tolist()}  # seed 4: a red frame
    assert figures.PICK_RGB in {tuple(v) for v in arr[ch * 1 + 6 - 2, 2 * cw:3 * cw].tolist()}  # seed 6: blue


def test_study_plots_carry_their_numbers():
    hist = figures.finger_histogram({"k = 5": {5: 3, 6: 1}, "IS": {5: 4}})
    assert [t.name for t in hist.data] == ["k = 5", "IS"]
    assert list(hist.data[0].x) == ["5", "6"] and list(hist.data[0].y) == [0.75, 0.25]
    rate = figures.extra_rate_figure([(5, 0.5, 8), (9, 0.25, 8)], reference=0.0)
    assert list(rate.data[0].x) == [5, 9] and list(rate.data[0].y) == [0.5, 0.25]
    assert any(s["y0"] == 0.0 for s in json.loads(rate.to_json())["layout"]["shapes"])  # the IS line
    birth = figures.birth_figure([(9, 5), (7, 6), (5, 6)], born=(8, 7))
    assert list(birth.data[0].x) == [9, 7, 5] and list(birth.data[0].y) == [5, 6, 6]
    assert "born at steps 8-7" in json.dumps(json.loads(birth.to_json())["layout"]["annotations"])
    rows = [{"step": 2, "image": 4, "share": 1.0, "weight": 0.3, "entropy": 1.0, "switched": False},
            {"step": 1, "image": 7, "share": 0.5, "weight": 0.9, "entropy": 0.1, "switched": True}]
    tl = figures.timeline_figure(rows)
    assert list(tl.data[0].text) == ["#4", "#7"] and list(tl.data[1].y) == [1.0, 0.1]



def test_box_in_image_outlines_the_copied_part():
    img = -torch.ones(1, 8, 8)
    pic = figures.box_in_image(img, (2, 3, 4, 6), target=80)  # rows 2-4, cols 3-6
    assert pic.size == (80, 80)
    assert cell(pic, 10, 2, 4, di=0.05) == (255, 200, 0)  # its top edge
    assert cell(pic, 10, 3, 6, dj=0.95) == (255, 200, 0)  # its right edge
    assert cell(pic, 10, 3, 4) == (0, 0, 0)  # inside: the image itself
    assert cell(pic, 10, 6, 6) == (0, 0, 0)  # outside


def test_seams_are_red_lines_only_where_pieces_meet_and_only_on_the_hand_if_asked():
    img, idx, pos, cnt = blob()
    cnt[:] = 1
    pic = figures.seam_picture(img, idx, pos, cnt, target=80)  # one seam: between columns 3 and 4
    assert cell(pic, 10, 3, 4, dj=0.0) == (230, 30, 30) and cell(pic, 10, 0, 4, dj=0.0) == (230, 30, 30)
    assert cell(pic, 10, 3, 3, dj=0.0) != (230, 30, 30)  # inside a piece: no line
    assert cell(pic, 10, 3, 3) == (140, 140, 140)  # the hand, dimmed
    hand = (img[0] > 0).numpy()
    only = figures.seam_picture(img, idx, pos, cnt, target=80, within=hand)
    assert cell(only, 10, 3, 4, dj=0.0) == (230, 30, 30) and cell(only, 10, 0, 4, dj=0.0) != (230, 30, 30)


def test_commitment_picture_colours_early_dark_late_bright_never_grey_with_a_key():
    img, *_ = blob()
    steps_map = torch.full((8, 8), 9)
    steps_map[:, 4:] = 1
    steps_map[0, 0] = -1
    pic = figures.commitment_picture(steps_map, img, 10, target=80)
    assert pic.width == 80 and pic.height > 80  # the key under the map
    early, late = np.array(cell(pic, 10, 7, 0)), np.array(cell(pic, 10, 7, 7))
    assert early.sum() < late.sum()  # dark purple, bright yellow
    assert cell(pic, 10, 0, 0, di=0.3, dj=0.3) == figures.NEVER_RGB
    assert cell(pic, 10, 1, 3, di=0.9) == (255, 255, 255)  # the hand's outline, just outside it


def test_finger_sources_grid_has_a_row_per_finger_framed_in_its_colour():
    ims = [-torch.ones(1, 8, 8), torch.ones(1, 8, 8)]
    pic = figures.finger_sources_grid([ims, ims[:1]], [["#3: 9 px", "#1: 2 px"], ["#0: 4 px"]], target=32)
    colours = {tuple(v) for v in np.asarray(pic).reshape(-1, 3).tolist()}
    assert figures.finger_colour(1) in colours and figures.finger_colour(2) in colours
