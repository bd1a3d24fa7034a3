"""The naive dense formulation of the local machines: one weight per (pixel, key) pair, all at once.

This is the baseline the benchmark compares the engine against, and a second, independent way to
compute the same mathematics. It materialises a [P, N * H * W] matrix of logits per image, so it is
only usable on small training sets.
"""
from __future__ import annotations

import torch

from .geometry import overhang, windows
from ..schedule import alpha_sigma


def allowed_positions(machine: str, k: int, hq: int, wq: int, h: int, w: int) -> torch.Tensor:
    """[P', H*W] bool: may query pixel p draw on keys centred at training position s?"""
    d = k // 2
    ti, tj = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)  # training positions
    qi, qj = torch.arange(hq).repeat_interleave(wq), torch.arange(wq).repeat(hq)  # query pixels
    if machine == "ls":
        return torch.eye(h * w, dtype=torch.bool)
    if machine == "els":
        inside = (ti >= d) & (ti <= h - 1 - d) & (tj >= d) & (tj <= w - 1 - d)
        return inside.unsqueeze(0).expand(hq * wq, h * w)
    # bbels: same overhang on all four sides
    oq = torch.cat([overhang(qi, hq, d), overhang(qj, wq, d)], dim=1)  # [P', 4]
    ot = torch.cat([overhang(ti, h, d), overhang(tj, w, d)], dim=1)  # [HW, 4]
    return (oq.unsqueeze(1) == ot.unsqueeze(0)).all(-1)


@torch.no_grad()
def naive_mean(images: torch.Tensor, machine: str, x: torch.Tensor, t: float, k: int) -> torch.Tensor:
    """Posterior mean [B, C, H', W'] of LS / ELS / bbELS by the dense formulation."""
    n, c, h, w = images.shape
    bsz, _, hq, wq = x.shape
    a, b = alpha_sigma(t)
    rows_q = torch.arange(hq * wq, device=x.device) // wq
    cols_q = torch.arange(hq * wq, device=x.device) % wq
    rows_t = torch.arange(h * w, device=x.device) // w
    cols_t = torch.arange(h * w, device=x.device) % w
    keys = windows(images, rows_t, cols_t, k).reshape(n * h * w, -1)  # [N*HW, D]
    centres = images.permute(0, 2, 3, 1).reshape(n * h * w, c)  # [N*HW, C]
    mask = allowed_positions(machine, k, hq, wq, h, w).to(x.device).repeat(1, n)  # [P', N*HW]
    sq = (keys * keys).sum(-1)  # [N*HW]
    out = []
    for xb in x:
        q = windows(xb[None], rows_q, cols_q, k, circular=machine == "els")[0]  # [P', D]
        logits = (a * q @ keys.T - a * a / 2 * sq) / (b * b)  # [P', N*HW]
        logits = logits.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1)  # [P', N*HW]
        out.append((weights @ centres).T.reshape(c, hq, wq))
    return torch.stack(out)
