"""The keys of one big class, made distinct and grouped into blocks with bounds (the engine's fast path).

Two exact ideas (docs/ENGINE.md gives the measurements behind them):

- *Identical keys.* Silhouettes and flat backgrounds repeat the same window many times (hands at
  k = 7: 53% of the windows are distinct). One row per distinct window, with its count c, gives the
  same softmax when log c is added to its logit: c identical keys weigh c * exp(l).
- *Block bounds.* The distinct keys are sorted into blocks of L keys that lie close together in the
  top-r principal directions of the keys. Per block we keep the box [lo, hi] of those r
  coordinates and the range [rlo, rhi] of the norm of what is left (the residual). An orthogonal
  projection never lengthens a vector, so for every key K of a block and any query Q

      |Q - a K|^2 >= dist(P Q, a box)^2 + gap(|Q - P Q|, a [rlo, rhi])^2

  which bounds every logit of the block from above without computing one. A block whose bound is
  far below a logit already found (by more than PRUNE_GAP) weighs less than exp(-PRUNE_GAP) per key
  and is skipped; nothing it holds can change a mean, a weight, an entropy or the heaviest key.

Rows of a KeySet (distinct keys, in block order, padded to a whole number of blocks):
    keys_t [D + 1, J*L]  the window K (channel, row, col) and |K|^2, one column per key (dim-major:
                         the product takes column slices at full speed); for torch's products
    chunks               the same numbers as the compiled CPU kernel reads them (cpu_kernel.pack:
                         64 keys at a time, without the entries they all share); a KeySet holds
                         one of the two
    values [J*L, C + 2]  1 (for the sum of weights), the key's centre pixel (C values), log count
    rep    [J*L]         id n * H * W + position of the first key (in the dense order) with this window
Padding rows have |K|^2 = tables.PAD_SQ (a logit far below any real one) and values 0, so they add nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kernels import cpu as cpu_kernel
from .tables import centre_entries, padded_images, window_table

BLOCK = 256  # keys per block
MICRO = 32  # keys per run inside a block whose softmax terms are skipped together when all are negligible
RANK = 8  # principal directions kept for the bounds
PRUNE_GAP = 36.0  # exp(-36) = 2e-16 per key: far below float32's resolution of any sum of weights


@dataclass
class KeySet:
    keys_t: torch.Tensor | None  # [D + 1, J*L], or None where the kernel's chunks serve
    chunks: cpu_kernel.Keys | None  # the keys for the CPU kernel (cpu_kernel.pack), or None
    values: torch.Tensor  # [J*L, C + 2]
    rep: torch.Tensor  # [J*L] int64
    logc: torch.Tensor  # [J*L] log count (a copy of values[:, -1], contiguous)
    centres: torch.Tensor  # [C, J*L] the key centres (values[:, 1:-1] transposed, for the CPU kernel)
    basis: torch.Tensor  # [r, D] orthonormal rows
    # per block: the box lo, hi of the top-r principal coordinates (r rows each), the range rlo,
    # rhi of the residual norms and the largest log count, one column per block, padded with
    # columns whose log count is -inf (no block) to Jp, a multiple of 16 (the CPU kernel reads 16)
    bound_t: torch.Tensor  # [2r + 3, Jp]
    blocks: int  # J
    block: int
    duplicates: bool  # some window occurs more than once

    @property
    def lo(self) -> torch.Tensor:  # [J, r]
        return self.bound_t[:self.basis.shape[0], :self.blocks].T

    @property
    def hi(self) -> torch.Tensor:  # [J, r]
        r = self.basis.shape[0]
        return self.bound_t[r:2 * r, :self.blocks].T

    @property
    def rlo(self) -> torch.Tensor:  # [J]
        return self.bound_t[-3, :self.blocks]

    @property
    def rhi(self) -> torch.Tensor:  # [J]
        return self.bound_t[-2, :self.blocks]

    @property
    def logc_max(self) -> torch.Tensor:  # [J]
        return self.bound_t[-1, :self.blocks]

    def rows(self, blocks: torch.Tensor):
        """keys_t ([D + 1, b*L]), values, rep, logc and centres ([C, b*L]) of the given blocks [b],
        gathered block by block."""
        j = self.blocks
        rows = tuple(v.view(j, -1).index_select(0, blocks).view(-1, *v.shape[1:])
                     for v in (self.values, self.rep, self.logc))
        cols = tuple(v.view(v.shape[0], j, -1).index_select(1, blocks).view(v.shape[0], -1) for v in (self.keys_t, self.centres))
        return cols[0], *rows, cols[1]

    def span(self, b0: int, b1: int):
        """keys_t ([D + 1, n]), values, rep, logc and centres ([C, n]) of blocks b0 .. b1 - 1 (views, no copy)."""
        lo, hi = b0 * self.block, b1 * self.block
        return self.keys_t[:, lo:hi], *(v[lo:hi] for v in (self.values, self.rep, self.logc)), self.centres[:, lo:hi]

    @staticmethod
    def bytes_needed(keys: int, dim: int, c: int) -> int:
        """Memory of a KeySet of `keys` distinct keys of dimension dim (C channels)."""
        return (keys + BLOCK) * (dim + 1 + 2 * c + 2 + 2) * 4

    @classmethod
    def build(cls, imgs: torch.Tensor, rep: torch.Tensor, count: torch.Tensor, k: int, kernel: bool = False) -> "KeySet":
        """The KeySet of the distinct keys rep [Kd] (ids n * H*W + position) of imgs [n, C, H, W];
        with kernel=True its keys come as the CPU kernel's chunks instead of keys_t."""
        n, c, h, w = imgs.shape
        padded = padded_images(imgs, k)  # [n, H + 2d, W + 2d, C]
        img, pos = rep // (h * w), rep % (h * w)
        kd, dim = rep.shape[0], c * k * k
        keys = window_table(padded, img, pos, k, w, kernel)[:dim]  # [D, Kd]
        r = min(RANK, dim)
        # principal directions of the keys (second moment, so the mean direction counts too)
        gram = keys @ keys.T  # [D, D]
        _, vecs = torch.linalg.eigh(gram.double())
        basis = vecs[:, -r:].flip(-1).T.to(keys.dtype).contiguous()  # [r, D], strongest first
        proj = basis @ keys  # [r, Kd]
        resid = torch.linalg.vector_norm(keys - basis.T @ proj, dim=0)  # [Kd]
        del keys
        order = block_order(proj.T, BLOCK, kernel=kernel)
        j = -(-kd // BLOCK)
        pad = j * BLOCK - kd
        # rows in block order; padding rows (image -1) at the end
        img_o = F.pad(img[order], (0, pad), value=-1)
        pos_o = F.pad(pos[order], (0, pad))
        keys_t = window_table(padded, img_o, pos_o, k, w, kernel)  # [D + 1, J*L]
        proj, resid = proj.T[order], resid[order]
        logc = count[order].to(keys_t.dtype).log()
        values = torch.zeros(j * BLOCK, c + 2, device=imgs.device)
        values[:kd, 0] = 1.0
        values[:kd, 1:1 + c] = keys_t[centre_entries(c, k, imgs.device), :kd].T
        values[:kd, -1] = logc
        rep_rows = torch.full((j * BLOCK,), -1, dtype=torch.int64, device=imgs.device)
        rep_rows[:kd] = rep[order]
        # per-block bounds; padding rows repeat the last real key so they do not widen the box
        last = torch.full((pad,), kd - 1, dtype=torch.int64, device=imgs.device)
        fill = torch.cat([torch.arange(kd, device=imgs.device), last])
        pb, rb = proj[fill].view(j, BLOCK, r), resid[fill].view(j, BLOCK)
        bound_t = torch.zeros(2 * r + 3, -(-j // 16) * 16, device=imgs.device)
        bound_t[:, :j] = torch.cat([pb.amin(1).T, pb.amax(1).T, rb.amin(1).unsqueeze(0), rb.amax(1).unsqueeze(0),
                                    logc[fill].view(j, BLOCK).amax(1).unsqueeze(0)])
        bound_t[-1, j:] = -math.inf  # padding columns: no block
        return cls(
            keys_t=None if kernel else keys_t, chunks=cpu_kernel.pack(keys_t, min(64, BLOCK)) if kernel else None,
            values=values, rep=rep_rows, logc=values[:, -1].contiguous(),
            centres=values[:, 1:1 + c].T.contiguous(), basis=basis,
            bound_t=bound_t, blocks=j, block=BLOCK, duplicates=bool((count > 1).any()),
        )

    def upper_logits(self, q: torch.Tensor, qsq: torch.Tensor, a: float, b: float) -> torch.Tensor:
        """Upper bounds [Q, J] of the logits (plus log count) of every key of each block, for queries
        q [Q, D] with |q|^2 = qsq [Q]. Logits as the engine computes them: (|Q|^2 - |Q - a K|^2) / 2b^2."""
        pq = q @ self.basis.T  # [Q, r]
        rq = (q - pq @ self.basis).norm(dim=-1)  # [Q]
        pq = pq.unsqueeze(1)  # [Q, 1, r]
        gap = (a * self.lo - pq).clamp(min=0) + (pq - a * self.hi).clamp(min=0)  # [Q, J, r]
        box = (gap * gap).sum(-1)  # [Q, J]
        rq = rq.unsqueeze(1)
        rgap = (a * self.rlo - rq).clamp(min=0) + (rq - a * self.rhi).clamp(min=0)  # [Q, J]
        return (qsq.unsqueeze(1) - box - rgap * rgap) / (2 * b * b) + self.logc_max


def block_order(p: torch.Tensor, block: int, levels: int = 3, kernel: bool = False) -> torch.Tensor:
    """An order of the rows of p [K, r] in which consecutive runs of `block` rows lie close together:
    sort-tile-recursive packing on the first `levels` coordinates (slabs along p[:, 0], each cut
    into slabs along p[:, 1], ...; every cell a whole number of blocks; ties keep the row order).
    kernel=True: the same order from the CPU kernel (cpu_kernel.str_order)."""
    kn = p.shape[0]
    levels = min(levels, p.shape[1])
    nblocks = -(-kn // block)
    per_level = max(1, math.ceil(nblocks ** (1.0 / levels)))
    if kernel:
        return cpu_kernel.str_order(p, block, levels, per_level)
    order = torch.arange(kn, device=p.device)
    group = torch.zeros(kn, dtype=torch.int64, device=p.device)
    cell = nblocks * block  # rows per cell of the current level
    for dim in range(levels):
        o = torch.argsort(p[order, dim], stable=True)
        order, group = order[o], group[o]
        o = torch.argsort(group, stable=True)
        order, group = order[o], group[o]
        if dim == levels - 1:
            break
        starts = torch.searchsorted(group, group, right=False)  # first row of each row's group
        rank = torch.arange(kn, device=p.device) - starts
        cell = max(block, -(-cell // block // per_level) * block)
        group = group * (nblocks + 1) + rank // cell
    return order
