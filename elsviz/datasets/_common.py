"""What every source shares: the options, subset selection, resizing, 8-bit quantisation, the memory cap.

Every loader produces pixel arrays [N, C, H, W] (uint8 0..255, or float32 in [-1, 1] for float
inputs), chooses its subset with `choose`, and hands the rest to `finish`, which converts the
channels, checks the memory cap, resizes, quantises and builds the ImageSet.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ElsvizError
from ..imageset import ImageSet
from ..validate import as_int, as_seed, is_int

GB = 1024**3
DEFAULT_MAX_BYTES = 4 * GB  # float32 pixels of the finished set
DEFAULT_MAX_TOTAL_BYTES = 1 * GB  # uncompressed bytes read out of one zip
DEFAULT_MAX_FILES = 100_000  # entries in one zip or images in one folder
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


@dataclass(frozen=True)
class Options:
    """The options every source takes (see load_dataset)."""

    size: tuple[int, int] | None = None
    channels: int | None = None
    limit: int | None = None
    seed: int = 0
    classes: tuple | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_files: int = DEFAULT_MAX_FILES


def parse_options(size=None, channels=None, limit=None, seed=0, classes=None, max_bytes=DEFAULT_MAX_BYTES,
                  max_total_bytes=DEFAULT_MAX_TOTAL_BYTES, max_files=DEFAULT_MAX_FILES) -> Options:
    if size is not None:
        if is_int(size):
            size = (int(size), int(size))
        elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2 and all(map(is_int, size)):
            size = (int(size[0]), int(size[1]))
        else:
            raise ElsvizError(f"size must be an int or a pair (height, width), got {size!r}.")
        if min(size) < 1 or max(size) > 1024:
            raise ElsvizError(f"size must be between 1 and 1024 pixels, got {size}.")
    if channels is not None and not (is_int(channels) and int(channels) in (1, 3)):
        raise ElsvizError(f"channels must be 1 (grayscale) or 3 (colour), got {channels!r}.")
    channels = None if channels is None else int(channels)
    if limit is not None:
        limit = as_int("limit", limit, 1, None, " (a number of images)")
    seed = as_seed(seed)
    if classes is not None:
        if isinstance(classes, str) or is_int(classes):
            classes = (classes,)
        if not isinstance(classes, (Sequence, set, frozenset, np.ndarray)):
            raise ElsvizError(f"classes must be a label, a class name or a list of them, got {classes!r}.")
        classes = tuple(classes)
        if not classes:
            raise ElsvizError("classes is empty: give at least one label (or leave classes out for all).")
    max_bytes, max_total_bytes, max_files = (as_int(name, value, 1) for name, value in (
        ("max_bytes", max_bytes), ("max_total_bytes", max_total_bytes), ("max_files", max_files)))
    return Options(size, channels, limit, seed, classes, max_bytes, max_total_bytes, max_files)


def class_values(classes: tuple, class_names: Sequence[str] | None, where: str) -> list[int]:
    """Label values for `classes`, given as label numbers or class names."""
    values = []
    names = list(class_names) if class_names is not None else []
    for c in classes:
        if isinstance(c, str):
            if c in names:
                values.append(names.index(c))
            elif c.isdigit():
                values.append(int(c))
            else:
                raise ElsvizError(f"{where} has no class named {c!r}; its classes are {names}.")
        elif is_int(c):
            values.append(int(c))
        else:
            raise ElsvizError(f"classes must be label numbers or class names, got {c!r}.")
    return values


def choose(labels: np.ndarray | None, n: int, opts: Options, where: str, class_names=None) -> np.ndarray:
    """Indices kept by `classes` then `limit` (a random subset drawn with `seed`), in the original order."""
    idx = np.arange(n)
    if opts.classes is not None:
        if labels is None:
            raise ElsvizError(f"classes={list(opts.classes)} was given but {where} has no labels; leave classes out.")
        wanted = class_values(opts.classes, class_names, where)
        present = set(np.unique(labels).tolist())
        missing = [v for v in wanted if v not in present]
        if missing:
            raise ElsvizError(f"{where} has no images with label(s) {missing}; labels present: {sorted(present)}.")
        idx = idx[np.isin(labels, wanted)]
    if opts.limit is not None and opts.limit < len(idx):
        rng = np.random.default_rng(opts.seed)
        idx = np.sort(rng.choice(idx, size=opts.limit, replace=False))
    return idx


def check_memory(n: int, c: int, h: int, w: int, opts: Options, where: str) -> None:
    need = n * c * h * w * 4
    if need > opts.max_bytes:
        raise ElsvizError(
            f"{where}: {n} images of {c}x{h}x{w} need {need / GB:.2f} GB as float32, over the memory cap of "
            f"{opts.max_bytes / GB:.2f} GB. Load fewer or smaller images (limit=..., size=...), "
            "or raise max_bytes if this machine has the memory."
        )


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """[N, C, H, W] -> [N, channels, H, W]; 3 -> 1 by BT.601 luminance, 1 -> 3 by repetition."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1:
        return np.repeat(x, 3, axis=1)
    is_u8 = x.dtype == np.uint8
    y = np.tensordot(np.asarray(LUMA, dtype=np.float32), x.astype(np.float32), axes=([0], [1]))[:, None]  # [N,1,H,W]
    return np.clip(np.rint(y), 0, 255).astype(np.uint8) if is_u8 else y.astype(np.float32)


def fit(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop to the aspect ratio of `size`, then resize with anti-aliasing. x [N, C, H, W] float."""
    n, c, h, w = x.shape
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if h * tw != w * th:  # crop the longer side so nothing is stretched
        if h * tw > w * th:
            ch = max(1, round(w * th / tw))
            top = (h - ch) // 2
            x = x[:, :, top:top + ch, :]
        else:
            cw = max(1, round(h * tw / th))
            left = (w - cw) // 2
            x = x[:, :, :, left:left + cw]
    if tuple(x.shape[-2:]) == (th, tw):
        return x
    return F.interpolate(x, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)


def quantise(u: torch.Tensor) -> torch.Tensor:
    """Values in 0..255 (float) -> the nearest 8-bit level, as u8 / 127.5 - 1, exactly."""
    return u.round().clamp(0, 255) / 127.5 - 1.0


def finish(x: np.ndarray, labels: np.ndarray | None, opts: Options, *, where: str, name: str,
           description: str, source: str, class_names=None, meta: dict | None = None,
           default_channels: int | None = None) -> ImageSet:
    """Pixels [N, C, H, W] (uint8 0..255, or float in [-1, 1]) -> a finished ImageSet.

    Applies `channels` and `size` and the memory cap; 8-bit input stays on 8-bit levels after resizing.
    Selection (classes, limit) is the caller's job, done before decoding where that saves work.
    """
    if x.ndim != 4 or x.shape[0] == 0:
        raise ElsvizError(f"{where}: no images to load (shape {x.shape}).")
    channels = opts.channels or default_channels or x.shape[1]
    n, _, h, w = x.shape
    th, tw = opts.size or (h, w)
    check_memory(n, channels, th, tw, opts, where)
    x = to_channels(x, channels)
    is_u8 = x.dtype == np.uint8
    out = torch.empty((n, channels, th, tw), dtype=torch.float32)  # [N, C, H', W']
    chunk = max(1, (64 * 1024 * 1024) // (channels * h * w * 4))  # bound the float32 working set
    for i in range(0, n, chunk):
        part = torch.from_numpy(np.ascontiguousarray(x[i:i + chunk])).to(torch.float32)  # [n, C, H, W]
        if is_u8:
            out[i:i + chunk] = quantise(fit(part, (th, tw)))
        else:
            out[i:i + chunk] = fit(part, (th, tw)).clamp(-1.0, 1.0)
    lab = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return ImageSet(out, lab, None if class_names is None else tuple(class_names), name, description, source,
                    dict(meta or {}))
