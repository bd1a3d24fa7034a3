"""The top keys of one pixel (Engine.explain), streamed over the keys in bounded memory."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..schedule import alpha_sigma
from .geometry import classes, windows


def top_keys(machine: str, x, t: float, k, pixel, top: int, imgs, subset, labels, chunk_elems: int,
             hashes, mult) -> list[dict]:
    """The `top` heaviest distinct windows of pixel (i, j) of x [1, C, H', W'], heaviest first.

    imgs [N, C, H, W] (the images in play, subset: their indices in the set or None); hashes: the
    window hash of every key ([N, H, W]; IS: [N]) and mult the number of keys of the same class with
    that window (same shape). Keys go in chunks of about chunk_elems numbers; one pass keeps the
    running log-sum-exp and the best distinct windows so far (identical windows have identical
    hashes and logits; the first key of a window in the dense order stands for it, as in denoise).
    """
    a, b = alpha_sigma(t)
    n, c, h, w = imgs.shape
    _, _, hq, wq = x.shape
    i, j = pixel
    if machine == "is":
        q = x.flatten()  # [CHW]
        pos = torch.zeros(1, dtype=torch.int64, device=x.device)
        per_key = c * h * w
    else:
        p = i * wq + j
        pos = next(torch.tensor(cl[1], device=x.device) for cl in classes(machine, k, hq, wq, h, w) if p in cl[0])
        q = windows(x, torch.tensor([i], device=x.device), torch.tensor([j], device=x.device), k, machine == "els")[0, 0]  # [D]
        per_key = q.shape[0]
    total = pos.shape[0] * n  # keys: j = (position j // N, image j % N)
    kc = max(1, chunk_elems // per_key)
    logz = torch.tensor(-math.inf, device=x.device)
    best = torch.empty(0, device=x.device), torch.empty(0, dtype=torch.int64, device=x.device)  # logits, key ids
    for j0 in range(0, total, kc):
        ids = torch.arange(j0, min(j0 + kc, total), device=x.device)
        keys = _keys(machine, imgs, pos, ids, k)  # [kc, D]
        logits = (a * (keys @ q) - a * a / 2 * (keys * keys).sum(-1)) / (b * b)  # [kc]
        logz = torch.logaddexp(logz, torch.logsumexp(logits, 0))
        best = _best_distinct(torch.cat([best[0], logits]), torch.cat([best[1], ids]),
                              lambda key: _hash(machine, hashes, pos, key, n, w), top)
    out = []
    for logit, key in zip(best[0].tolist(), best[1].tolist()):
        img, at = key % n, int(pos[key // n])
        idx = int(subset[img]) if subset is not None else img
        patch = _keys(machine, imgs, pos, torch.tensor([key], device=x.device), k)[0]
        out.append({
            "image": idx,
            "row": i if machine == "is" else at // w,
            "col": j if machine == "is" else at % w,
            "weight": float(math.exp(logit - float(logz))),
            "count": int(mult[img] if machine == "is" else mult[img, at // w, at % w]),
            "label": None if labels is None else int(labels[idx]),
            "patch": patch.reshape(c, -1, w if machine == "is" else k).cpu(),
            "logit": logit,
        })
    return out


def _keys(machine, imgs, pos, ids, k):
    """The windows of keys ids [M] (key j: image j % N at position pos[j // N]) -> [M, D]."""
    n, c, h, w = imgs.shape
    img, at = ids % n, pos[ids // n]
    if machine == "is":
        return imgs[img].flatten(1)
    return _gather(imgs, img, at, k)


def _gather(imgs, img, at, k):
    """The zero-padded k x k windows of images img [M] at flat positions at [M] -> [M, C*k*k]."""
    n, c, h, w = imgs.shape
    d = k // 2
    off = torch.arange(k, device=imgs.device) - d
    rows = (at // w).view(-1, 1) + off + d  # [M, k] into the padded image
    cols = (at % w).view(-1, 1) + off + d
    padded = F.pad(imgs, (d, d, d, d))
    win = padded[img.view(-1, 1, 1, 1), torch.arange(c, device=imgs.device).view(1, c, 1, 1),
                 rows.view(-1, 1, k, 1), cols.view(-1, 1, 1, k)]  # [M, C, k, k]
    return win.reshape(img.shape[0], -1)


def _hash(machine, hashes, pos, key, n, w):
    img, at = key % n, pos[key // n]
    return hashes[img] if machine == "is" else hashes[img, at // w, at % w]


def _best_distinct(logits, ids, hash_of, top: int):
    """The `top` best keys with distinct windows among (logits, ids): heaviest first, on equal
    logits the earlier key (as argmax), one key per window (its first)."""
    order = torch.argsort(ids)
    logits, ids = logits[order], ids[order]
    order = torch.argsort(-logits, stable=True)
    logits, ids = logits[order], ids[order]
    hashes = hash_of(ids)
    _, inverse = torch.unique(hashes, return_inverse=True)
    place = torch.arange(ids.shape[0], device=ids.device)
    first = torch.full((int(inverse.max()) + 1 if ids.numel() else 0,), ids.shape[0], device=ids.device,
                       dtype=torch.int64).scatter_reduce(0, inverse, place, "amin")
    keep = torch.sort(first).values[:top]
    return logits[keep], ids[keep]
