"""The driver's exact merge of what the shards send back (docs/SCALING.md, "The merge").

Softmax statistics of disjoint sets of keys merge with softmax.combine; sums (pspc's and cfdm's
weighted images, cfdm's entropy) add; the Gaussian model's moments merge by Chan's formula. The key
a machine names is decided in two steps: the shard whose heaviest key weighs most (on equal weights
the key first in the dense order, as the single engine's argmax takes it) gives the window; then
every shard says where that window first occurs among its keys and how often (Shard.ties), and the
smallest place and the sum of the counts are the single engine's source and tie count.
"""
from __future__ import annotations

import torch

from ..engine.softmax import Softmax, combine

# A key's place in the dense order travels as position * RADIX + image: more images than any set holds
RADIX = 2**32
ABSENT = torch.iinfo(torch.int64).max  # a window a shard does not hold


def order_of(pos: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The place of keys (position, global image) in the dense order, as one int64."""
    return pos * RADIX + image


def key_id(order: torch.Tensor, per_image: int) -> torch.Tensor:
    """A place in the dense order -> the engine's key id image * per_image + position."""
    return (order % RADIX) * per_image + order // RADIX


def winners(value: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """value, order [S, ...] of each shard's heaviest key -> [...]: the shard with the largest
    value, and of equal values the one whose key comes first in the dense order."""
    top = value.max(0, keepdim=True).values
    return torch.where(value == top, order, ABSENT).argmin(0)


def pick(v: torch.Tensor, shard: torch.Tensor) -> torch.Tensor:
    """v [S, ...] -> [...]: each entry from the shard `shard` names."""
    return torch.gather(v, 0, shard.unsqueeze(0)).squeeze(0)


def statistics(parts: list[dict]) -> Softmax:
    """Softmax statistics of the shards' disjoint keys, merged (m, s, acc, ent; best left 0: the
    heaviest key comes from winners and ties)."""
    out = None
    for p in parts:
        acc = p.get("acc")
        part = (p["m"], p["s"], p["m"].new_zeros(*p["m"].shape, 0) if acc is None else acc, p["ent"],
                torch.zeros_like(p["m"], dtype=torch.int64))
        out = part if out is None else combine(out, part)
    sm = Softmax(0, 0, "cpu")
    sm.m, sm.s, sm.acc, sm.ent, sm.best = out
    return sm


def log_sum_exp(parts: list[dict]) -> torch.Tensor:
    """The shards' largest logits m and sums s of exp(l - m) -> m + log(s) over all of them (as one
    engine computes it: the sum rescaled to the largest m, one log at the end)."""
    m = torch.stack([p["m"] for p in parts])
    top = m.max(0).values
    return top + torch.log((torch.stack([p["s"] for p in parts]) * torch.exp(m - top)).sum(0))


def ties(parts: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every shard's (first place, count) of the named windows -> the first place over all shards
    and the count summed: the single engine's key and tie count."""
    first = torch.stack([p["order"] for p in parts]).min(0).values
    return first, torch.stack([p["count"] for p in parts]).sum(0)


def moments(parts: list[tuple[int, torch.Tensor, torch.Tensor]]):
    """(n, mu, M2) of disjoint sets of images -> those of their union (Chan et al.'s pairwise
    update, in float64: M2 gains n_a n_b / n (mu_a - mu_b)(mu_a - mu_b)^T)."""
    n, mu, m2 = parts[0]
    m2 = m2.clone()
    for nb, mub, m2b in parts[1:]:
        delta = mub - mu
        total = n + nb
        m2 += m2b + torch.outer(delta, delta) * (n * nb / total)
        mu = mu + delta * (nb / total)
        n = total
    return n, mu, m2
