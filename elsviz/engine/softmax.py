"""Streaming softmax statistics over keys that arrive in chunks, and their exact merge
(docs/ENGINE.md, "Streaming softmax")."""
from __future__ import annotations

import math

import torch


def _max_argmax(x: torch.Tensor):
    """(max, argmax) over the last dim in one pass over x: the maxima of blocks of 32 first, then
    the block that holds the maximum is searched (on the CPU several times faster than amax and
    argmax over long rows). On ties the first index wins, as with torch.argmax."""
    k = x.shape[-1]
    if x.device.type != "cpu" or k % 32 or k < 1024:
        m, arg = x.max(-1)
        return m, arg
    blocks = x.view(*x.shape[:-1], k // 32, 32)  # [..., K/32, 32]
    bmax = blocks.amax(-1)  # [..., K/32]
    m, bi = bmax.max(-1)  # [...]
    inner = torch.gather(blocks, -2, bi[..., None, None].expand(*bi.shape, 1, 32)).squeeze(-2)  # [..., 32]
    return m, bi * 32 + inner.argmax(-1)


def combine(old, new):
    """Softmax statistics (m, s, acc, ent, best) of two disjoint sets of keys, merged. On equal
    maxima the old heaviest key stays (the earlier key wins, as argmax does)."""
    om, os_, oacc, oent, obest = old
    m, s, acc, ent, best = new
    fresh, empty = torch.isinf(om), torch.isinf(m)  # nothing seen before / in this chunk
    m_new = torch.maximum(om, m)
    alpha = torch.where(fresh, 0.0, torch.exp(om - m_new))
    beta = torch.where(empty, 0.0, torch.exp(m - m_new))
    old_ent = torch.where(fresh, 0.0, oent + os_ * (om - m_new))
    new_ent = torch.where(empty, 0.0, ent + s * (m - m_new))
    return (m_new, alpha * os_ + beta * s, alpha.unsqueeze(-1) * oacc + beta.unsqueeze(-1) * acc,
            alpha * old_ent + beta * new_ent, torch.where(m > om, best, obest))


class Softmax:
    """Running statistics of a softmax over keys that arrive in chunks.

    Per query q: m = max logit, s = sum exp(l - m) (over keys), acc = sum exp(l - m) * value,
    ent = sum exp(l - m) * (l - m), best = id of a key with l == m.
    Then mean = acc / s, weight of the heaviest key = 1 / s, entropy = log s - ent / s.
    """

    def __init__(self, q: int, c: int, device):
        self.m = torch.full((q,), -math.inf, device=device)
        self.s = torch.zeros(q, device=device)
        self.acc = torch.zeros(q, c, device=device)
        self.ent = torch.zeros(q, device=device)
        self.best = torch.zeros(q, dtype=torch.int64, device=device)

    @staticmethod
    def rows(logits: torch.Tensor, values_fn):
        """Per-row statistics of logits [..., K] (all finite); overwrites logits.

        values_fn(e) -> [..., C] = sum_k e[..., k] * value(k). Returns m, s, acc, ent, arg per row.
        """
        m, arg = _max_argmax(logits)  # [...]
        lm = logits.sub_(m.unsqueeze(-1))  # [..., K], l - m <= 0
        # exp(-80) ~ 2e-35 counts for nothing next to the max's 1, and below it exp() leaves the
        # fast vectorised path (denormals)
        lm.clamp_(min=-80.0)
        e = torch.exp(lm)  # [..., K]
        return m, e.sum(-1), values_fn(e), torch.linalg.vecdot(e, lm), arg

    def merge(self, q_idx, m, s, acc, ent, best):
        """Merge per-row statistics into the queries q_idx [R] (None: row r is query r; several
        rows may name the same query)."""
        if q_idx is not None:
            m, s, acc, ent, best = self._reduce(q_idx, m, s, acc, ent, best)
        self.m, self.s, self.acc, self.ent, self.best = combine(
            (self.m, self.s, self.acc, self.ent, self.best), (m, s, acc, ent, best))

    def put(self, row0: int, part: "Softmax"):
        """Copy the statistics of `part` into rows row0 .. row0 + len(part) - 1."""
        for name in ("m", "s", "acc", "ent", "best"):
            v = getattr(part, name)
            getattr(self, name)[row0:row0 + v.shape[0]] = v

    def merge_at(self, rows, m, s, acc, ent, best):
        """Merge per-row statistics into the distinct queries rows [R]."""
        old = (self.m[rows], self.s[rows], self.acc[rows], self.ent[rows], self.best[rows])
        for name, v in zip(("m", "s", "acc", "ent", "best"), combine(old, (m, s, acc, ent, best))):
            getattr(self, name)[rows] = v

    def _reduce(self, q_idx, m, s, acc, ent, best):
        """Combine several rows per query into one set of statistics per query."""
        q = self.m.shape[0]
        mq = torch.full((q,), -math.inf, device=m.device).scatter_reduce(0, q_idx, m, "amax")
        mr = mq[q_idx]  # [R]
        w = torch.exp(m - mr)
        sq = torch.zeros(q, device=m.device).index_add_(0, q_idx, w * s)
        accq = torch.zeros(q, acc.shape[1], device=m.device).index_add_(0, q_idx, w.unsqueeze(-1) * acc)
        entq = torch.zeros(q, device=m.device).index_add_(0, q_idx, w * (ent + s * (m - mr)))
        big = torch.iinfo(torch.int64).max
        bestq = torch.full((q,), big, dtype=torch.int64, device=m.device).scatter_reduce(
            0, q_idx, torch.where(m == mr, best, big), "amin"
        )
        seen = ~torch.isinf(mq)  # queries without rows here keep m = -inf and contribute nothing
        return mq, sq, accq, torch.where(seen, entq, 0.0), torch.where(seen, bestq, 0)


def _rows_fused(logits: torch.Tensor, vals: torch.Tensor):
    """Softmax.rows written for torch.compile (one fused pass on a GPU): logits [..., K],
    vals [C, ...broadcastable to logits]: acc[..., c] = sum_k e[..., k] * vals[c, ..., k]."""
    m = logits.amax(dim=-1)
    arg = logits.argmax(dim=-1)
    lm = (logits - m.unsqueeze(-1)).clamp(min=-80.0)
    e = torch.exp(lm)
    acc = torch.stack([(e * v).sum(-1) for v in vals.unbind(0)], -1)
    return m, e.sum(-1), acc, (e * lm).sum(-1), arg


_COMPILED: dict = {}


def compiled_rows():
    if "rows" not in _COMPILED:
        _COMPILED["rows"] = torch.compile(_rows_fused, dynamic=True)
    return _COMPILED["rows"]



def weighted(e: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """sum_k e[g, r, k] * vals[g, c, k] -> [G, R, C], as matrix-vector products (much faster on
    the CPU than a batched product with so few columns)."""
    if e.shape[0] == 1:
        return torch.stack([e[0] @ v for v in vals[0]], -1).unsqueeze(0)
    return torch.bmm(e, vals.transpose(1, 2))

