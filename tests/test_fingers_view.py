"""elsviz.app.fingers: silhouettes from a user's images, the hand check, the pieces of a mosaic and
the patches a region is made of, a region's timeline, slicing a batched run, the gallery's clicks."""
from collections import Counter

import numpy as np
import pytest
import torch

from elsviz import ImageSet, load_dataset
from elsviz.errors import ElsvizError
from elsviz.app.fingers import cell_at, hand_check, parse_ks, patch_caption, patches_sentence, piece_patches, pieces, silhouette_problem, silhouettes, timeline
from elsviz.sampling import Frame, Trajectory


@pytest.fixture(scope="module")
def hands():
    return load_dataset("hands", limit=12)


def mosaic_maps():
    """A 4x6 mosaic: image 7 on the right (copied 2 rows down), image 0 on the left, its lower half
    from another offset, and one shared pixel (top left).

        0 1 1 2 2 2
        1 1 1 2 2 2
        3 3 3 2 2 2
        3 3 3 2 2 2
    """
    idx = torch.zeros(4, 6, dtype=torch.int64)
    idx[:, 3:] = 7
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij")
    pos = torch.stack([rows, cols], -1).clone()  # [4, 6, 2]
    pos[:, 3:, 0] += 2
    pos[2:, :3, 1] += 1
    cnt = torch.ones(4, 6, dtype=torch.int64)
    cnt[0, 0] = 3
    return idx, pos, cnt


def test_pieces_are_the_consistent_copies_and_shared_pixels_belong_to_none():
    labels = pieces(*mosaic_maps())
    assert labels.tolist() == [[0, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2], [3, 3, 3, 2, 2, 2], [3, 3, 3, 2, 2, 2]]
    idx, pos, cnt = mosaic_maps()
    assert pieces(idx, pos, torch.ones_like(cnt)).max() == 3  # the shared pixel joins its piece when attributed
    assert pieces(idx, pos, torch.full_like(cnt, 2)).max() == 0  # all shared: no pieces


def frame_of(idx, pos, cnt, weight=0.9, entropy=0.1, i=1):
    h, w = idx.shape
    return Frame(i, i / 4, 3, torch.zeros(1, 1, h, w), torch.zeros(1, 1, h, w), idx[None], pos[None],
                 torch.full((1, h, w), weight), cnt[None], torch.full((1, h, w), entropy))


def test_piece_patches_list_each_copied_patch_of_a_region():
    idx, pos, cnt = mosaic_maps()
    frame = frame_of(idx, pos, cnt)
    everything = np.ones((4, 6), bool)
    patches, shared = piece_patches(frame, everything)
    assert shared == 1
    assert [(p["image"], p["offset"], p["pixels"]) for p in patches] == [(7, (2, 0), 12), (0, (0, 1), 6), (0, (0, 0), 5)]
    assert patches[0]["box"] == (2, 3, 5, 5)  # rows 2..5, cols 3..5 of training image 7
    left_column = np.zeros((4, 6), bool)
    left_column[:, 0] = True
    patches, shared = piece_patches(frame, left_column)
    assert shared == 1 and [(p["image"], p["pixels"]) for p in patches] == [(0, 2), (0, 1)]
    with pytest.raises(ElsvizError, match="mask"):
        piece_patches(frame, np.ones((3, 3), bool))
    assert patch_caption(patches[0]) == "#0 rows 2-3, cols 1-1: 2 px"  # copied one column to the right
    assert patches_sentence(patches, shared) == ("Made of 2 copied patches from 1 training image, and 1 shared pixel.")
    piece = np.zeros((4, 6), bool)
    piece[:, 3:] = True
    one, none = piece_patches(frame, piece)
    assert patches_sentence(one, none).endswith("One patch copied whole: a single piece of the mosaic.")
    assert "All its pixels are shared" in patches_sentence([], 1)


def test_timeline_follows_the_region_and_marks_where_it_switches_source():
    idx, pos, cnt = mosaic_maps()
    other = torch.full_like(idx, 4)
    frames = [frame_of(other, pos, cnt, 0.2, 2.0, i=3), frame_of(idx, pos, cnt, 0.6, 0.7, i=2),
              frame_of(idx, pos, cnt, 0.95, 0.05, i=1)]
    traj = Trajectory(frames, frames[-1].mean, frames[0].x, 4, [3] * 4)
    right = np.zeros((4, 6), bool)
    right[:, 4:] = True
    rows = timeline(traj, right)
    assert [r["step"] for r in rows] == [3, 2, 1]
    assert [r["image"] for r in rows] == [4, 7, 7]
    assert [r["switched"] for r in rows] == [False, True, False]
    assert rows[0]["weight"] == pytest.approx(0.2) and rows[2]["entropy"] == pytest.approx(0.05)
    assert rows[2]["share"] == 1.0 and rows[2]["shared"] == 0.0
    corner = np.zeros((4, 6), bool)
    corner[0, 0] = True  # one shared pixel: no single source
    assert timeline(traj, corner)[-1]["image"] is None and timeline(traj, corner)[-1]["shared"] == 1.0


def test_the_hands_set_is_silhouettes_and_its_hands_read_as_hands(hands):
    assert silhouette_problem(hands) == ""
    check = hand_check(hands.images)
    assert check.checked == 12 and check.usable and check.counts[5] >= 11
    assert "read as hands" in check.describe()


def test_photos_and_small_images_are_refused_with_what_to_do():
    photos = load_dataset("photos", limit=24)
    assert "threshold" in silhouette_problem(photos)
    digits = load_dataset("digits", limit=4)
    assert "Resize" in silhouette_problem(digits)
    check = hand_check(silhouettes(photos).images)
    assert check.checked == 24 and not check.usable and check.hands <= 6
    assert "Not hands at all" in check.describe()


def test_silhouettes_threshold_a_dark_hand_on_a_light_table_into_white_on_black(hands):
    grey = -0.6 * hands.images[:4] + 0.1  # dark hand (-0.5) on a light table (0.7), not two-valued
    photo = ImageSet(grey.repeat(1, 3, 1, 1), name="photos of hands")
    assert "threshold" in silhouette_problem(photo)
    sil = silhouettes(photo)
    assert sil.shape == (1, 32, 32) and silhouette_problem(sil) == ""
    assert torch.equal(sil.images, torch.where(hands.images[:4] > 0, 1.0, -1.0))
    assert hand_check(sil.images).counts == Counter({5: 4})
    fixed = silhouettes(photo, threshold=0.0)  # a fixed threshold, the same side is the hand
    assert "at +0.00" in fixed.description and hand_check(fixed.images).counts == Counter({5: 4})
    with pytest.raises(ElsvizError, match="threshold"):
        silhouettes(photo, threshold=2)


def test_a_click_on_the_gallery_names_its_cell():
    size = {"width": 400, "height": 150}  # 8 columns of 50, 3 rows of 50 (20 pictures)
    assert cell_at({"x": 10, "y": 10, **size}, 20, 8) == 0
    assert cell_at({"x": 60, "y": 60, **size}, 20, 8) == 9
    assert cell_at({"x": 399, "y": 120, **size}, 20, 8) is None  # the empty end of the last row
    assert cell_at({"x": 160, "y": 120, **size}, 20, 8) == 19
    assert cell_at(None, 20, 8) is None


def test_the_study_takes_odd_ks_and_schedule_names_and_says_what_is_wrong_with_others():
    assert parse_ks("5, 9 13", "bbels", (32, 32)) == [5, 9, 13]
    assert parse_ks("7 mnist-resnet 7", "bbels", (32, 32)) == [7, "mnist-resnet"]
    for text, match in [("", "at least one"), ("4", "odd"), ("five", "neither"), ("-3", "odd")]:
        with pytest.raises(ElsvizError, match=match):
            parse_ks(text, "bbels", (32, 32))
    with pytest.raises(ElsvizError, match="at most 31"):
        parse_ks("33", "els", (32, 32))



def test_the_hand_check_says_whether_it_counted_all_or_a_sample():
    hands = load_dataset("hands", n=600)  # more than CHECK_ALL: a sample
    from elsviz.app.fingers import CHECK_ALL

    check = hand_check(hands.images)
    assert check.checked == CHECK_ALL and check.total == 600
    assert check.describe().startswith(f"{check.hands} of {CHECK_ALL} training images read as hands (3 to 7 "
                                       "fingers), a sample spread evenly over the 600")
    every = hand_check(hands.images[:200])
    assert every.checked == every.total == 200
    assert every.describe().startswith("All 200 training images read as hands") == (every.hands == 200)
    assert f"{every.counts[5]} with 5 fingers" in every.describe()
    few = hand_check(hands.images, n=64)
    assert few.checked == 64 and "a sample spread evenly over the 600" in few.describe()


def test_the_study_says_its_settings_and_its_table_holds_every_count():
    from elsviz import Engine
    from elsviz.analysis.fingers import finger_study
    from elsviz.app.fingers import Studied, study_settings
    from elsviz.export import csv_bytes, json_bytes
    import csv
    import io
    import json

    assert study_settings("bbels", range(0, 16), [9, 13, 17, 25], 10) == (
        "bbELS on 16 seeds (0 to 15) at k = 9, 13, 17 and 25 (one window size for every step of a run), 10 steps "
        "each; IS on the same seeds as the reference.")
    assert "the schedule mnist-resnet (k changes with the step)" in study_settings("els", [3], [5, "mnist-resnet"], 20)
    small = load_dataset("hands", n=24, size=24)
    study = finger_study(Engine(small, "bbels", "cpu"), [2, 3, 4], [3, 7], steps=3)
    ideal = finger_study(Engine(small, "is", "cpu"), [2, 3, 4], [3], steps=3)
    studied = Studied(study, ideal)
    assert studied.settings() == study_settings("bbels", [2, 3, 4], [3, 7], 3)
    rows = studied.table()
    assert len(rows) == 3 * 2 + 3 and rows[-1]["machine"] == "is" and rows[-1]["k"] == ""
    for row in rows[:6]:
        k, n = row["k"], [2, 3, 4].index(row["seed"])
        assert row["fingers"] == study.counts[k][n] and row["extra"] == (study.counts[k][n] > 5) and row["steps"] == 3
    back = list(csv.DictReader(io.StringIO(csv_bytes(rows).decode())))
    assert [int(r["fingers"]) for r in back] == [r["fingers"] for r in rows]
    data = json.loads(json_bytes(studied.to_json()))
    assert data["extra_rate"] == {"3": study.extra_rate(3), "7": study.extra_rate(7)} and data["steps"] == 3
    assert data["per_seed"] == json.loads(json.dumps(rows))
