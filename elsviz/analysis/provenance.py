"""Provenance summaries: which training patches a run's pixels draw on, the mosaic they make, seams.

Vocabulary (docs/THEORY.md, "Provenance"): for each output pixel the engine names the key (training
image `source_index`, centre `source_pos`) with the largest weight. A pixel whose winning window is
matched by several identical keys (`source_count > 1`, e.g. flat background) is *shared*: it has no
single source and is never attributed to one of them.
"""
from __future__ import annotations

import torch

from ..engine import windows


def shared_mask(source_count: torch.Tensor) -> torch.Tensor:
    """[..., H, W] bool: pixels whose winning window is shared by identical keys (no single source)."""
    return source_count > 1


def source_shares(source_index: torch.Tensor, source_count: torch.Tensor) -> list[tuple[int, int]]:
    """[(training image, pixels it supplies), ...] over the attributed pixels, most pixels first.

    source_index, source_count: [H, W] (one image of a batch).
    """
    idx = source_index[~shared_mask(source_count)]  # [P_attributed]
    if idx.numel() == 0:
        return []
    images, counts = torch.unique(idx, return_counts=True)
    order = torch.argsort(counts, descending=True, stable=True)
    return [(int(images[o]), int(counts[o])) for o in order]


def distinct_sources(source_index: torch.Tensor, source_count: torch.Tensor) -> int:
    """How many distinct training images the attributed pixels of one image [H, W] are copied from."""
    return len(source_shares(source_index, source_count))


def seams(source_index: torch.Tensor, source_pos: torch.Tensor, source_count: torch.Tensor):
    """Where the patch mosaic changes patch, between neighbouring attributed pixels.

    Two neighbours belong to the same piece when they are copied from the same training image at
    positions as far apart as the pixels themselves (a consistent copy); otherwise a seam runs
    between them. Shared pixels (no single source) make no seams.
    source_index [H, W], source_pos [H, W, 2], source_count [H, W] ->
    (between columns j and j+1: bool [H, W-1], between rows i and i+1: bool [H-1, W]).
    """
    attributed = ~shared_mask(source_count)  # [H, W]

    def cut(a, b, pa, pb, offset, both):
        same = (a == b) & ((pb - pa) == torch.tensor(offset, device=pa.device)).all(-1)
        return both & ~same

    vertical = cut(source_index[:, :-1], source_index[:, 1:], source_pos[:, :-1], source_pos[:, 1:], (0, 1),
                   attributed[:, :-1] & attributed[:, 1:])  # [H, W-1]
    horizontal = cut(source_index[:-1], source_index[1:], source_pos[:-1], source_pos[1:], (1, 0),
                     attributed[:-1] & attributed[1:])  # [H-1, W]
    return vertical, horizontal


def mosaic(images: torch.Tensor, source_index: torch.Tensor, source_pos: torch.Tensor) -> torch.Tensor:
    """Rebuild an image from the centre pixels of its winning keys.

    images [N, C, H, W] (the training set), source_index [B, H', W'], source_pos [B, H', W', 2]
    -> [B, C, H', W']. At the last step this is the output itself (docs/THEORY.md: each pixel copies
    the centre of its heaviest key), shared pixels included (identical windows, identical centres).
    """
    idx = source_index.to(images.device)
    pos = source_pos.to(images.device)
    pix = images[idx, :, pos[..., 0], pos[..., 1]]  # [B, H', W', C]
    return pix.permute(0, 3, 1, 2).contiguous()  # [B, C, H', W']


def patch(image: torch.Tensor, row: int, col: int, k: int) -> torch.Tensor:
    """The k x k window of image [C, H, W] centred on (row, col) -> [C, k, k].

    Outside the image it is zero-padded (0 = mid grey in [-1, 1]), as the LS and bbELS machines pad.
    """
    c = image.shape[0]
    win = windows(image[None], torch.tensor([row]), torch.tensor([col]), k)  # [1, 1, C*k*k]
    return win.view(c, k, k)


def changed_fraction(a: torch.Tensor, b: torch.Tensor, tol: float = 0.05) -> float:
    """Fraction of pixels of two images [C, H, W] that differ by more than tol (any channel)."""
    return float(((a - b).abs().amax(0) > tol).float().mean())
