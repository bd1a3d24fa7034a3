"""The numbers the lesson page quotes: plain PyTorch, so they are tested like the rest of elsviz.

Each answers one question of the lesson (docs/APP.md, "Lesson"): is the output a training image
(nearest_image)? does a pixel's heaviest patch sit where the pixel sits (same_place_fraction)? does
a border pixel's heaviest patch keep its distance to the border (border_kept_fraction)? The
sentences the lesson makes of these numbers are elsviz.claims'.
"""
from __future__ import annotations

import torch

from . import claims
from .provenance import shared_mask

LESSON_SETS = ("mnist", "digits")  # built-in sets of handwritten digits the lesson runs on, preferred first
LESSON_K = 5  # one k for the sections that compare machines: small enough to create, large enough for digits
K_STEPS = (3, 5, 9, 15)  # the "what k does" strip on 16 x 16 digits: texture -> copies
SNAPSHOT_STEPS = 5  # pictures of x_t in the "noise and the reverse process" strip


def nearest_image(images: torch.Tensor, img: torch.Tensor) -> tuple[int, float]:
    """(index, RMS distance on the [-1, 1] scale) of the training image closest to img.

    images [N, C, H, W], img [C, H, W] of the same size. A distance near 0 means img *is* that
    training image (memorised); a digit made of patches lies well away from every one.
    """
    return claims.nearest(images, img)


def lesson_set(builtins) -> str | None:
    """The set the lesson runs on when the sidebar's is not one of LESSON_SETS: the first of LESSON_SETS among
    the names of built-in sets (those that load offline), or None."""
    return next((name for name in LESSON_SETS if name in tuple(builtins)), None)


def same_place_fraction(source_pos: torch.Tensor, source_count: torch.Tensor) -> float:
    """Fraction of the attributed pixels whose heaviest key is centred where the pixel itself sits.

    source_pos [H, W, 2], source_count [H, W] (one image). LS: 1.0 (it copies from the same place);
    ELS: well below (it copies from anywhere).
    """
    h, w = source_count.shape
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    here = (source_pos[..., 0].cpu() == rows) & (source_pos[..., 1].cpu() == cols)  # [H, W]
    attributed = ~shared_mask(source_count.cpu())
    n = int(attributed.sum())
    return float((here & attributed).sum()) / n if n else float("nan")


def border_kept_fraction(source_pos: torch.Tensor, source_count: torch.Tensor, k: int) -> float:
    """Among attributed pixels whose k x k window sticks out of the image, the fraction of the
    overhanging directions (row, column) in which the key's centre keeps the pixel's own row or column.

    bbELS (zero padding at the training size): 1.0, a window over the border only matches keys at
    the same place relative to it. ELS (wrapping around): lower. NaN when no window sticks out (k = 1).
    """
    h, w = source_count.shape
    r = k // 2
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    out_rows = (rows < r) | (rows >= h - r)  # [H, W]: the window sticks out above or below
    out_cols = (cols < r) | (cols >= w - r)
    attributed = ~shared_mask(source_count.cpu())
    pos = source_pos.cpu()
    kept = ((pos[..., 0] == rows) & out_rows & attributed).sum() + ((pos[..., 1] == cols) & out_cols & attributed).sum()
    total = (out_rows & attributed).sum() + (out_cols & attributed).sum()
    return float(kept) / float(total) if int(total) else float("nan")


def snapshot_steps(steps: int, n: int = SNAPSHOT_STEPS) -> list[int]:
    """n steps spread from the noisiest (steps - 1) to the last (1), for a strip of the reverse process."""
    top = steps - 1
    if top <= n:
        return list(range(top, 0, -1))
    picks = {round(top - j * (top - 1) / (n - 1)) for j in range(n)}
    return sorted(picks, reverse=True)
