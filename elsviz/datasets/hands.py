"""`hands`: procedural grayscale hand silhouettes, white on black, with their ground truth.

Each hand is a palm, a wrist, a thumb and `fingers - 1` fingers, drawn as polygons at 4x the
output size with Pillow and box-averaged down (anti-aliased, exact 8-bit levels). Finger length,
width and spread, hand rotation, mirror (left or right hand), position and scale vary per image.
Every hand is checked at the output size: between each pair of neighbouring digits there is dark
background, and every digit reaches bright ink, so the count reads at a glance; hands that fail are
drawn again from the same random stream (deterministic).

Ground truth, per image, in meta (rows follow any subset):
    fingers   int64 [N]           digits drawn, thumb included
    tips      float32 [N, 7, 2]   (row, col) of each digit's tip in output pixels, thumb first; NaN pads
    knuckles  float32 [N, 7, 2]   (row, col) where each digit leaves the palm; NaN pads
    rotation  float32 [N]         degrees, counter-clockwise; 0 = fingers up
    mirrored  bool [N]            True: thumb on the image's right (a left hand seen from the back)
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import ElsvizError
from ..imageset import ImageSet
from ..validate import is_int
from ._common import Options, choose, finish

MAX_FINGERS = 7
OVERSAMPLE = 4  # draw at 4x, box-average down
ALONG = (0.5, 0.6, 0.7, 0.8, 0.9)  # where the check looks, as fractions from knuckle to tip
# relative length of the fingers other than the thumb, from the index to the little finger
LENGTH_PROFILE = np.array([0.92, 1.0, 0.94, 0.76])
SOURCE = "Procedural (elsviz.datasets.hands): generated polygons, no external data; public domain."


def _capsule(base: np.ndarray, direction: float, length: float, width: float, inset: float) -> np.ndarray:
    """Polygon [P, 2] (x, y) of a finger leaving `base` at angle `direction` (radians from +y), round tip."""
    d = np.array([math.sin(direction), math.cos(direction)])  # along the finger
    nrm = np.array([d[1], -d[0]])  # across it
    r = width / 2
    start = base - d * inset  # reach into the palm so the join is solid
    tip_c = base + d * (length - r)
    arc = np.linspace(-math.pi / 2, math.pi / 2, 9)
    cap = tip_c + np.outer(np.sin(arc), nrm) * r + np.outer(np.cos(arc), d) * r
    return np.vstack([start - nrm * r, cap, start + nrm * r])


def _superellipse(a: float, b: float, p: float = 3.0, cy: float = 0.0, n: int = 48) -> np.ndarray:
    th = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(th), np.sin(th)
    x = a * np.sign(c) * np.abs(c) ** (2 / p)
    y = cy + b * np.sign(s) * np.abs(s) ** (2 / p)
    return np.stack([x, y], axis=1)


def _design(rng: np.random.Generator, fingers: int):
    """One hand in hand coordinates (x right, y up, palm centre at 0, units of output pixels at 32x32)."""
    m = fingers - 1  # non-thumb fingers
    width = rng.uniform(1.9, 2.3) * (1.0 if m <= 4 else 4.6 / (m + 0.6))  # finger width
    gap = rng.uniform(1.6, 2.1) * (1.0 if m <= 4 else 0.8)  # gap between finger bases
    palm_w = max(m * width + (m - 1) * gap + rng.uniform(0.6, 1.4), rng.uniform(8.0, 9.0))
    palm_h = rng.uniform(8.5, 10.5)
    length = rng.uniform(7.5, 10.0)  # longest finger, from the knuckle line
    spread = math.radians(rng.uniform(4.0, 9.0)) * (4.0 / max(m, 1)) ** 0.3  # angle between neighbours
    profile = np.interp(np.linspace(0, 1, m), np.linspace(0, 1, 4), LENGTH_PROFILE) if m > 1 else np.ones(1)
    xs = (np.arange(m) - (m - 1) / 2) * (width + gap)
    top = palm_h / 2
    polys, tips, knuckles = [], [], []
    # thumb: from the lower side of the palm, pointing out and up
    t_dir = -math.radians(rng.uniform(48, 75))  # leans to the thumb side (-x)
    t_len = length * rng.uniform(0.62, 0.78)
    t_w = width * rng.uniform(1.1, 1.25)
    t_base = np.array([-palm_w / 2 + t_w * 0.25, -palm_h * rng.uniform(0.0, 0.2)])
    polys.append(_capsule(t_base, t_dir, t_len, t_w, inset=t_w))
    tips.append(t_base + t_len * np.array([math.sin(t_dir), math.cos(t_dir)]))
    knuckles.append(t_base)
    for i in range(m):
        direction = (i - (m - 1) / 2) * spread + rng.normal(0, math.radians(1.5))
        f_len = length * profile[i] * rng.uniform(0.93, 1.07)
        f_w = width * rng.uniform(0.92, 1.06)
        base = np.array([xs[i], top - 0.3])
        polys.append(_capsule(base, direction, f_len, f_w, inset=palm_h * 0.4))
        tips.append(base + f_len * np.array([math.sin(direction), math.cos(direction)]))
        knuckles.append(base)
    palm = _superellipse(palm_w / 2, palm_h / 2, p=rng.uniform(2.6, 3.6))
    wrist_w = palm_w * rng.uniform(0.62, 0.75)
    wrist = np.array([[-wrist_w / 2, 0], [wrist_w / 2, 0], [wrist_w / 2 * 1.1, -palm_h / 2 - 30],
                      [-wrist_w / 2 * 1.1, -palm_h / 2 - 30]])
    return [wrist, palm] + polys, np.array(tips), np.array(knuckles), palm_h


def _bilinear(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Values of img [H, W] at points [..., 2] (row, col), bilinear, clamped to the frame."""
    h, w = img.shape
    r = np.clip(pts[..., 0], 0, h - 1)
    c = np.clip(pts[..., 1], 0, w - 1)
    r0 = np.minimum(r.astype(np.int64), h - 2)
    c0 = np.minimum(c.astype(np.int64), w - 2)
    fr, fc = r - r0, c - c0
    v = img.astype(np.float64)
    return (v[r0, c0] * (1 - fr) * (1 - fc) + v[r0, c0 + 1] * (1 - fr) * fc
            + v[r0 + 1, c0] * fr * (1 - fc) + v[r0 + 1, c0 + 1] * fr * fc)


def _check(img: np.ndarray, tips: np.ndarray, knuckles: np.ndarray) -> bool:
    """At output size: every digit has bright ink, and dark background separates neighbouring digits."""
    h, w = img.shape
    if np.any(tips < 0.5) or np.any(tips[:, 0] > h - 1.5) or np.any(tips[:, 1] > w - 1.5):
        return False
    along = np.stack([knuckles + f * (tips - knuckles) for f in ALONG])  # [F, D, 2] points on each digit
    if _bilinear(img, along).min() < 150:
        return False  # a digit too thin to read
    s = np.linspace(0.2, 0.8, 13)[:, None, None, None]  # [13, 1, 1, 1]
    between = along[None, :, :-1] + s * (along[None, :, 1:] - along[None, :, :-1])  # [13, F, D-1, 2]
    darkest = _bilinear(img, between).min(axis=0)  # [F, D-1]: darkest point between each pair of neighbours
    return bool((darkest <= 50).all())  # else two neighbours merge


def _render(rng: np.random.Generator, fingers: int, size: tuple[int, int]):
    h, w = size
    s_out = min(h, w) / 32.0  # design units -> output pixels
    for _attempt in range(200):
        polys, tips, knuckles, palm_h = _design(rng, fingers)
        rot = rng.uniform(-35.0, 35.0)
        mirrored = bool(rng.integers(0, 2))
        scale = rng.uniform(0.85, 1.1) * s_out
        a = math.radians(rot)
        mx = -1.0 if mirrored else 1.0

        def to_img(p, centre):  # hand coords (x right, y up) -> output (row, col)
            x, y = p[..., 0] * mx, p[..., 1]
            xr = x * math.cos(a) - y * math.sin(a)
            yr = x * math.sin(a) + y * math.cos(a)
            return np.stack([centre[0] - yr * scale, centre[1] + xr * scale], axis=-1)

        # fit: everything but the wrist's far end stays inside the frame, with a margin
        body = np.vstack([tips, polys[1]])
        pts = to_img(body, (0.0, 0.0))
        margin = 1.0
        lo_r, hi_r = margin - pts[:, 0].min(), h - 1 - margin - pts[:, 0].max()
        lo_c, hi_c = margin - pts[:, 1].min(), w - 1 - margin - pts[:, 1].max()
        if lo_r > hi_r or lo_c > hi_c:
            continue
        centre = (rng.uniform(lo_r, hi_r), rng.uniform(lo_c, hi_c))
        big = Image.new("L", (w * OVERSAMPLE, h * OVERSAMPLE), 0)
        draw = ImageDraw.Draw(big)
        for poly in polys:
            q = (to_img(poly, centre) + 0.5) * OVERSAMPLE  # pixel centres -> canvas coordinates
            draw.polygon([(float(c), float(r)) for r, c in q], fill=255)
        img = np.asarray(big.reduce(OVERSAMPLE))  # [h, w] uint8, exact box average
        t_img, k_img = to_img(tips, centre), to_img(knuckles, centre)
        if _check(img, t_img, k_img):
            return img, t_img, k_img, rot, mirrored
    raise ElsvizError(  # pragma: no cover - only for sizes far too small to show fingers
        f"hands: could not draw {fingers} separated fingers at {h}x{w}; use size=32 or larger."
    )


def load_hands(opts: Options, n: int = 1000, fingers: int | Sequence[int] = 5) -> ImageSet:
    """`n` hand silhouettes with `fingers` digits each (3..7, thumb included; a list mixes counts and labels them)."""
    counts = [fingers] if is_int(fingers) else list(fingers) if isinstance(fingers, (list, tuple, range)) else [None]
    if not counts or any(not is_int(f) or not 3 <= f <= MAX_FINGERS for f in counts):
        raise ElsvizError(f"hands: fingers must be an integer from 3 to {MAX_FINGERS} (or a list of them), "
                          f"got {fingers!r}.")
    if not is_int(n) or n < 1:
        raise ElsvizError(f"hands: n must be a positive number of images, got {n!r}.")
    size = opts.size or (32, 32)
    if min(size) < 24:
        raise ElsvizError(f"hands: fingers do not stay separate below 24x24; got size={size}. Use size=32.")
    rng = np.random.default_rng(opts.seed)
    per_image = rng.choice(np.asarray(counts), size=n) if len(counts) > 1 else np.full(n, counts[0])
    labelled = len(set(counts)) > 1
    labels = per_image.astype(np.int64) if labelled else None
    names = [f"{i} fingers" for i in range(MAX_FINGERS + 1)] if labelled else None
    idx = choose(labels, n, opts, "hands", names)
    imgs = np.zeros((len(idx), 1, *size), dtype=np.uint8)  # [n', 1, H, W]
    tips = np.full((len(idx), MAX_FINGERS, 2), np.nan, dtype=np.float32)
    knuckles = np.full((len(idx), MAX_FINGERS, 2), np.nan, dtype=np.float32)
    rotation = np.zeros(len(idx), dtype=np.float32)
    mirrored = np.zeros(len(idx), dtype=bool)
    for j, i in enumerate(idx):  # each hand has its own stream: a subset draws the same hands
        img, t, k, rot, mir = _render(np.random.default_rng([opts.seed, int(i)]), int(per_image[i]), size)
        imgs[j, 0] = img
        tips[j, : len(t)], knuckles[j, : len(k)] = t, k
        rotation[j], mirrored[j] = rot, mir
    meta = {
        "fingers": torch.from_numpy(per_image[idx].astype(np.int64)),
        "tips": torch.from_numpy(tips),
        "knuckles": torch.from_numpy(knuckles),
        "rotation": torch.from_numpy(rotation),
        "mirrored": torch.from_numpy(mirrored),
        "per_image": ("fingers", "tips", "knuckles", "rotation", "mirrored"),
        "seed": opts.seed,
    }
    count = f"{counts[0]}" if not labelled else "/".join(str(c) for c in sorted(set(counts)))
    from dataclasses import replace

    return finish(imgs, None if labels is None else labels[idx], replace(opts, size=size), where="hands",
                  name="hands", description=f"{len(idx):,} procedural {size[0]}x{size[1]} hand silhouettes "
                  f"with {count} separated fingers (thumb included)", source=SOURCE, class_names=names,
                  meta=meta, default_channels=1)
