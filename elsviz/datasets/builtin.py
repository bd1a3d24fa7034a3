"""The built-in sets that load offline from installed packages: `digits` and `photos`.

Both are deterministic (the same call gives the same bytes) and sit on 8-bit levels.
"""
from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ElsvizError
from ..imageset import ImageSet
from ..validate import is_int
from ._common import LUMA, Options, choose, finish

DIGITS_SOURCE = (
    "UCI ML hand-written digits (E. Alpaydin, C. Kaynak, 1998), as shipped with scikit-learn "
    "(sklearn.datasets.load_digits); licence CC BY 4.0."
)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """([1797, 8, 8] ink levels 0..16, [1797] labels), read from the file scikit-learn ships.

    Reading the file directly skips importing scikit-learn (over a second); the same numbers as
    sklearn.datasets.load_digits(), which is the fallback when the file is not where we expect.
    """
    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)  # [1797, 65]: 64 pixels, then the label
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    try:  # pragma: no cover - a scikit-learn that moved its data
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as exc:  # pragma: no cover
        raise ElsvizError("The built-in 'digits' set ships with scikit-learn: pip install scikit-learn.") from exc
    bunch = sk_digits()  # pragma: no cover
    return bunch.images, bunch.target.astype(np.int64)  # pragma: no cover


def load_digits(opts: Options) -> ImageSet:
    """The 1,797 8x8 handwritten digits of scikit-learn (43 writers), white on black, resized (default 16x16)."""
    levels, labels = _digits_arrays()  # [N, 8, 8] ink 0..16, [N]
    idx = choose(labels, len(labels), opts, "digits", [str(i) for i in range(10)])
    u8 = np.rint(levels[idx] * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [n, 1, 8, 8]
    size = opts.size or (16, 16)
    return finish(u8, labels[idx], replace(opts, size=size), where="digits", name="digits",
                  description=f"{len(idx):,} handwritten digits 0-9 from 43 writers, {size[0]}x{size[1]} grayscale",
                  source=DIGITS_SOURCE, class_names=[str(i) for i in range(10)])


# name, skimage.data function, credit (from each function's docstring)
PHOTOS = (
    ("astronaut", "astronaut", "Eileen Collins, NASA Great Images, public domain"),
    ("cat", "chelsea", "Chelsea the cat, Stefan van der Walt, CC0"),
    ("coffee", "coffee", "coffee cup, Rachel Michetti (Pikolo Espresso Bar), CC0"),
    ("rocket", "rocket", "DSCOVR launch on Falcon 9, SpaceX, public domain"),
    ("galaxies", "hubble_deep_field", "Hubble eXtreme Deep Field, NASA, public domain"),
    ("tissue", "immunohistochemistry", "immunohistochemistry, CMMI, no known copyright restrictions"),
    ("retina", "retina", "fundus photograph, Mikael Haggstrom, CC0"),
)
PHOTOS_SOURCE = (
    "Crops of the sample photographs shipped with scikit-image (skimage.data): "
    + "; ".join(f"{name}: {credit}" for name, _, credit in PHOTOS)
    + "."
)
CROP_FRACTIONS = (0.07, 0.12, 0.2, 0.34)  # crop side / short side of the photo: several scales
MIN_CROP_STD = 10.0  # 8-bit levels; flat crops (black sky, retina border) are redrawn


def _photo(func_name: str) -> np.ndarray:
    import skimage.data

    try:
        return getattr(skimage.data, func_name)()  # [H, W, 3] uint8
    except Exception as exc:  # pragma: no cover - a broken scikit-image install
        raise ElsvizError(
            f"scikit-image could not load its sample photograph {func_name!r} ({exc}); "
            "reinstall scikit-image (pip install --force-reinstall scikit-image)."
        ) from exc


def _pyramid(photo: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    """The photo [H, W, 3] shrunk once per crop scale, so that a crop is a plain size[0] x size[1] slice.

    Shrinking the whole photo (anti-aliased, back on 8-bit levels) and slicing it is the same as
    cropping and resizing each crop, up to where the crop's corner snaps to, and much faster.
    """
    h, w, _ = photo.shape
    image = Image.fromarray(photo)
    levels = []
    for frac in CROP_FRACTIONS:
        r = min(size) / (min(h, w) * frac)  # output pixels per photo pixel
        shape = (max(size[0], round(h * r)), max(size[1], round(w * r)))
        small = image.resize((shape[1], shape[0]), Image.BILINEAR)  # Pillow's bilinear is anti-aliased
        levels.append(np.asarray(small).transpose(2, 0, 1))  # [3, h_s, w_s] uint8
    return levels


def load_photos(opts: Options, n: int = 2000) -> ImageSet:
    """About `n` colour crops cut at several scales from scikit-image's photographs, labelled by photograph."""
    if not is_int(n) or n < len(PHOTOS):
        raise ElsvizError(f"photos: n must be an integer of at least {len(PHOTOS)}, got {n!r}.")
    size = opts.size or (32, 32)
    th, tw = size
    per = [n // len(PHOTOS) + (1 if i < n % len(PHOTOS) else 0) for i in range(len(PHOTOS))]
    labels = np.repeat(np.arange(len(PHOTOS)), per)  # [n]
    names = [p[0] for p in PHOTOS]
    idx = choose(labels, n, opts, "photos", names)
    keep = np.zeros(n, dtype=bool)
    keep[idx] = True
    out = np.zeros((n, 3, th, tw), dtype=np.uint8)  # [n, 3, H, W]
    luma = np.asarray(LUMA, np.float32)[:, None, None]
    start = 0
    for k, (_, func_name, _) in enumerate(PHOTOS):
        rows = np.arange(start, start + per[k])
        start += per[k]
        if not keep[rows].any():
            continue  # each photograph has its own random stream: skipping one changes no other
        levels = _pyramid(_photo(func_name), size)
        rng = np.random.default_rng([opts.seed, k])
        for row in rows:
            level = levels[int(rng.integers(0, len(levels)))]
            _, hs, ws = level.shape
            for _try in range(50):  # redraw flat crops (black sky, the retina's border)
                top, left = int(rng.integers(0, hs - th + 1)), int(rng.integers(0, ws - tw + 1))
                crop = level[:, top:top + th, left:left + tw]
                if (crop * luma).sum(axis=0).std() >= MIN_CROP_STD:
                    break
            out[row] = crop
    return finish(out[idx], labels[idx], replace(opts, size=size), where="photos", name="photos",
                  description=f"{len(idx):,} colour {th}x{tw} crops of {len(PHOTOS)} photographs, "
                  "labelled by photograph",
                  source=PHOTOS_SOURCE, class_names=names, default_channels=3)
