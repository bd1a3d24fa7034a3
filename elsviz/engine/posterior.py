"""What a machine says about a noisy image: the Posterior, and how a call's statistics become one."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .softmax import Softmax


@dataclass
class Posterior:
    """What a machine says about a noisy image x at time t. B = batch, H', W' = x's size.

    mean:          [B, C, H', W'] posterior mean = denoised estimate of x_0
    score:         [B, C, H', W'] -(x - a_t * mean) / b_t**2
    source_index:  [B, H', W'] int64, training image of the heaviest key of each pixel
    source_pos:    [B, H', W', 2] int64, (row, col) of that key's centre in its image
    source_weight: [B, H', W'] weight of that key (one key, not its identical copies)
    source_count:  [B, H', W'] int64, number of keys tied with it (identical windows); > 1: shared
    entropy:       [B, H', W'] entropy of the pixel's key weights, in nats
    """

    mean: torch.Tensor
    score: torch.Tensor
    source_index: torch.Tensor
    source_pos: torch.Tensor
    source_weight: torch.Tensor
    source_count: torch.Tensor
    entropy: torch.Tensor
    t: float
    k: int


def finish(machine: str, x, sm: Softmax, a, b, t, k, subset, train_hw: tuple[int, int], mult) -> Posterior:
    """The Posterior of a call from its softmax statistics. mult: the tie counts of the keys
    (Reads.multiplicity: [N] for IS, [N, H, W] for the local machines)."""
    return assemble(machine, x, sm, a, b, t, k, subset, train_hw, mult.flatten()[sm.best])


def assemble(machine: str, x, sm: Softmax, a, b, t, k, subset, train_hw: tuple[int, int], count) -> Posterior:
    """The Posterior from softmax statistics and the tie count of each row's heaviest key (count
    [rows]: [B] for IS, [B * H' * W'] for the local machines)."""
    bsz, c, hq, wq = x.shape
    h, w = train_hw
    entropy = (torch.log(sm.s) - sm.ent / sm.s).clamp(min=0.0)
    if machine == "is":
        # one weight per training image, shared by all pixels: [B] -> [B, H', W']
        mean = (sm.acc / sm.s.unsqueeze(-1)).reshape(bsz, c, h, w)
        per_pixel = lambda v: v.reshape(bsz, 1, 1).expand(bsz, hq, wq).contiguous()  # noqa: E731
        rows = torch.arange(hq, device=x.device).view(1, hq, 1).expand(bsz, hq, wq)
        cols = torch.arange(wq, device=x.device).view(1, 1, wq).expand(bsz, hq, wq)
        src_img, src_pos = per_pixel(sm.best), torch.stack([rows, cols], dim=-1)
        weight, count, entropy = per_pixel(1.0 / sm.s), per_pixel(count), per_pixel(entropy)
    else:
        mean = (sm.acc / sm.s.unsqueeze(-1)).reshape(bsz, hq, wq, c).permute(0, 3, 1, 2).contiguous()
        count = count.reshape(bsz, hq, wq)
        img, pos = sm.best // (h * w), sm.best % (h * w)
        src_img = img.reshape(bsz, hq, wq)
        src_pos = torch.stack([pos // w, pos % w], dim=-1).reshape(bsz, hq, wq, 2)
        weight = (1.0 / sm.s).reshape(bsz, hq, wq)
        entropy = entropy.reshape(bsz, hq, wq)
    if subset is not None:
        src_img = subset[src_img]
    score = -(x - a * mean) / (b * b)
    return Posterior(mean, score, src_img, src_pos, weight, count.to(torch.int64), entropy, t, k)


def make(x, mean, a, b, t, k, src_img, src_pos, weight, count, entropy, subset) -> Posterior:
    """A Posterior from a mean and per-pixel provenance (source indices within the images in play,
    mapped to the whole set's through subset)."""
    if subset is not None:
        src_img = subset[src_img]
    score = -(x - a * mean) / (b * b)
    return Posterior(mean, score, src_img, src_pos, weight, count.to(torch.int64), entropy, t, k)
