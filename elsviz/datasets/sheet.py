"""Contact sheets: a grid of a set's images, one row per class (or rows of a random sample), as a PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ElsvizError
from ..imageset import ImageSet


def to_uint8(images) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (C = 1 or 3)."""
    x = np.asarray(images, dtype=np.float32)
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def contact_sheet(images: ImageSet, *, per_row: int = 16, rows: int = 10, zoom: int = 3, gap: int = 2,
                  seed: int = 0, path: str | Path | None = None) -> Image.Image:
    """A grid of `images` (up to rows x per_row), each zoomed by nearest-neighbour `zoom`.

    A labelled set gets one row per class (its first `per_row` images), named at the left; an
    unlabelled set shows a random sample drawn with `seed`. Saved as PNG when `path` is given.
    """
    if zoom < 1 or per_row < 1 or rows < 1:
        raise ElsvizError("contact_sheet: per_row, rows and zoom must be positive.")
    n = len(images)
    if images.labels is not None and len(images.classes) <= rows:
        labels = images.labels.numpy()
        grid = [(images.class_name(c), np.nonzero(labels == c)[0][:per_row]) for c in images.classes]
    else:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(n, size=min(n, per_row * rows), replace=False))
        grid = [("", pick[i:i + per_row]) for i in range(0, len(pick), per_row)]
    _, h, w = images.shape
    cell_h, cell_w = h * zoom + gap, w * zoom + gap
    font = ImageFont.load_default()
    label_w = 0
    if any(name for name, _ in grid):
        label_w = max(int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(name, font=font)) for name, _ in grid) + 8
    sheet = Image.new("RGB", (label_w + per_row * cell_w + gap, len(grid) * cell_h + gap), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for r, (name, idx) in enumerate(grid):
        pix = to_uint8(images.images[idx])  # [n, H, W, C]
        for c, tile in enumerate(pix):
            im = Image.fromarray(tile[..., 0] if tile.shape[-1] == 1 else tile).convert("RGB")
            sheet.paste(im.resize((w * zoom, h * zoom), Image.NEAREST), (label_w + gap + c * cell_w, gap + r * cell_h))
        if name:
            draw.text((4, gap + r * cell_h + (h * zoom) // 2 - 6), name, fill=(230, 230, 230), font=font)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(path, format="PNG")
    return sheet
