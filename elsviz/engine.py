"""The exact score machines of Kamb & Ganguli: IS, LS, ELS and bbELS, with per-pixel provenance.

Read docs/THEORY.md first. For a query pixel p of a noisy image x at time t, each key
(training image n, position s) has the logit

    l(p, n, s) = -|| Q_p(x) - a_t K_s(x_n) ||^2 / (2 b_t^2)
               = (a_t <Q_p, K_ns> - a_t^2 |K_ns|^2 / 2) / b_t^2  + (a term of p alone, which cancels)

and the posterior mean of p is the softmax-weighted average of the keys' centre pixels.

How it is computed (one idea per block below):
- *Classes.* Query pixels that share the same set of key positions form a class (ELS: one class;
  LS: one per pixel; bbELS: one per boundary pattern). Classes of equal size are batched together.
- *Two ways to get <Q, K>.* "windowed": a key table [keys, D] of the class's windows and one
  matrix product per chunk; fast when many query pixels share the keys (small k).
  "embedded": place the query window into an empty training-sized image and take its dot product
  with the whole training images, <X_n, E(Q_p, s)>; needs no key table at all and wins when
  windows are nearly as large as the image (large k, or classes of a single pixel). A cost model
  picks one per class group; both give the same logits up to float32 rounding.
- *Streaming softmax.* Keys arrive in chunks; for every query pixel we carry the running max m,
  sum s, weighted sum of values, entropy term and the heaviest key (flash-attention style), so
  memory stays bounded whatever the training set size.
- *Big classes* (ELS's single class, bbELS's interior): the keys are made distinct (identical
  windows become one key with a count, log count added to its logit) and sorted into blocks with
  bounds on their logits (keyset.py); query pixels go in small tiles, and a block whose bound is far
  below a logit already found is skipped. Exact: a skipped key weighs less than exp(-36).
- *Bounded memory.* The batch goes in slices, the queries in tiles and the keys in chunks, so that
  working memory stays near chunk_elems numbers whatever the batch and the training set size.
- *Caches.* Key tables are kept per (machine, k, label, output size) in a byte-bounded LRU cache.

Identical keys (flat background) tie exactly: the heaviest key's weight is then shared, and
`source_count` says by how many keys.
"""
from __future__ import annotations

import math
import os
import threading
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import cpu_kernel
from .errors import ElsvizError
from .imageset import ImageSet
from .keyset import (MICRO, PRUNE_GAP, KeySet, centre_entries, distinct_keys, key_windows, padded_images,
                     window_table)
from .schedule import alpha_sigma, check_k, check_t
from .validate import as_bool, as_choice, as_int, as_label, as_pixel

MACHINES: dict[str, str] = {
    "is": "Ideal score: the whole image is compared with whole training images; it can only reproduce them.",
    "ls": "Local score: each pixel sees only its k x k neighbourhood, compared with the same place in every training image.",
    "els": "Equivariant local score: each pixel's k x k neighbourhood is matched against every patch of every training image, wherever it lies.",
    "bbels": "Boundary-broken ELS: like ELS, but a patch at the border only matches patches at the same place relative to the border (zero padding).",
}

# Relative cost of reading one float of a key table, in multiply-adds; used to choose between the
# windowed and the embedded way of computing <Q, K> (_plan). Tuned with elsviz.bench on torch's
# products. The compiled CPU kernel reads a table in chunks that stay in the processor's cache, far
# cheaper, where the table stays in the engine's cache (a quarter of it at most) and a call brings
# enough query rows per class to pay for building it (docs/ENGINE.md, "Two ways to get <Q, K>").
_TABLE_READ_COST = 16.0
_TABLE_READ_COST_KERNEL = 2.0
_KEPT_SHARE = 4
_KERNEL_MIN_ROWS = 32  # query rows per class in one call (batch x pixels)
# A class with at least this many logits per step (query pixels x keys) goes through the pruned
# path of distinct keys (keyset.py), where a call also brings at least _PRUNE_MIN_WORK multiply-adds
# per key (images x the class's query pixels x window size). The KeySet's set-up (distinct keys,
# principal directions, block order, bounds) costs about 1 us per key, whatever the window; a step
# costs each key about a nanosecond per 10-20 multiply-adds, and the KeySet saves a share of that.
# Measured: bbELS on one 16x16 digit brings at most 5,184 per key (64 pixels x 81 entries at
# k = 9), and a first trajectory (mnist-resnet) took 3.2 s through KeySets and 1.7 s through plain
# tables on one core (a warm one 0.40 s and 0.50 s); one hand at k = 7 brings 33,000 per key and
# took 4.5 s against 7.1 s at once (warm 3.2 s against 6.2 s, 2 threads).
_PRUNE_MIN_LOGITS = 2**21
_PRUNE_MIN_WORK = 2**14

# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Streaming softmax over keys, for Q query pixels at once
# ----------------------------------------------------------------------------------------------
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


def _combine(old, new):
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


class _Softmax:
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
        self.m, self.s, self.acc, self.ent, self.best = _combine(
            (self.m, self.s, self.acc, self.ent, self.best), (m, s, acc, ent, best))

    def put(self, row0: int, part: "_Softmax"):
        """Copy the statistics of `part` into rows row0 .. row0 + len(part) - 1."""
        for name in ("m", "s", "acc", "ent", "best"):
            v = getattr(part, name)
            getattr(self, name)[row0:row0 + v.shape[0]] = v

    def merge_at(self, rows, m, s, acc, ent, best):
        """Merge per-row statistics into the distinct queries rows [R]."""
        old = (self.m[rows], self.s[rows], self.acc[rows], self.ent[rows], self.best[rows])
        for name, v in zip(("m", "s", "acc", "ent", "best"), _combine(old, (m, s, acc, ent, best))):
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
    """_Softmax.rows written for torch.compile (one fused pass on a GPU): logits [..., K],
    vals [C, ...broadcastable to logits]: acc[..., c] = sum_k e[..., k] * vals[c, ..., k]."""
    m = logits.amax(dim=-1)
    arg = logits.argmax(dim=-1)
    lm = (logits - m.unsqueeze(-1)).clamp(min=-80.0)
    e = torch.exp(lm)
    acc = torch.stack([(e * v).sum(-1) for v in vals.unbind(0)], -1)
    return m, e.sum(-1), acc, (e * lm).sum(-1), arg


_COMPILED: dict = {}


def _compiled_rows():
    if "rows" not in _COMPILED:
        _COMPILED["rows"] = torch.compile(_rows_fused, dynamic=True)
    return _COMPILED["rows"]


# ----------------------------------------------------------------------------------------------
# Windows and classes
# ----------------------------------------------------------------------------------------------
def _window_index(size: int, pos: torch.Tensor, k: int, circular: bool) -> torch.Tensor:
    """Indices [len(pos), k] of the k rows (or columns) of windows centred at pos.

    Zero padding: indices into the image padded by d on each side. Circular: indices modulo size.
    """
    d = k // 2
    off = torch.arange(k, device=pos.device) - d  # [k]
    idx = pos.unsqueeze(-1) + off  # [M, k]
    return idx % size if circular else idx + d


def windows(img: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, k: int, circular: bool = False) -> torch.Tensor:
    """The k x k windows of img [n, C, H, W] centred at pixels (rows[m], cols[m]) -> [n, M, C*k*k].

    Zero padded outside the image, or circularly padded. Entries are ordered (channel, row, col).
    """
    n, c, h, w = img.shape
    d = k // 2
    src = img if circular else F.pad(img, (d, d, d, d))
    ri = _window_index(h, rows, k, circular)  # [M, k]
    ci = _window_index(w, cols, k, circular)  # [M, k]
    win = src[:, :, ri.unsqueeze(-1), ci.unsqueeze(-2)]  # [n, C, M, k, k]
    return win.permute(0, 2, 1, 3, 4).reshape(n, rows.shape[0], c * k * k)


def _overhang(i: torch.Tensor, size: int, d: int) -> torch.Tensor:
    """How far the window sticks out before and after the image, per position: [len(i), 2]."""
    return torch.stack([(d - i).clamp(min=0), (i + d - (size - 1)).clamp(min=0)], dim=-1)


@dataclass
class _Group:
    """G classes of equal size: P query pixels each and S key positions each.

    pix [G, P] query pixel indices (row * W' + col); pos [G, S] training positions (row * W + col).
    """

    pix: torch.Tensor
    pos: torch.Tensor
    embedded: bool


def _classes(machine: str, k: int, hq: int, wq: int, h: int, w: int) -> list[tuple[list[int], list[int]]]:
    """(query pixels, training positions) of every class, as flat indices."""
    d = k // 2
    if machine == "ls":
        return [([p], [p]) for p in range(h * w)]
    if machine == "els":
        inside = [u * w + v for u in range(d, h - d) for v in range(d, w - d)]
        return [(list(range(hq * wq)), inside)]
    # bbELS: rows and columns each fall into classes by their overhang; a class is a pair.
    def by_overhang(nq: int, nt: int):
        oq = _overhang(torch.arange(nq), nq, d).tolist()
        ot = _overhang(torch.arange(nt), nt, d).tolist()
        out = {}
        for i, o in enumerate(oq):
            out.setdefault(tuple(o), ([], []))[0].append(i)
        for u, o in enumerate(ot):
            if tuple(o) in out:
                out[tuple(o)][1].append(u)
        return list(out.values())

    row_classes, col_classes = by_overhang(hq, h), by_overhang(wq, w)
    result = []
    for rq, rt in row_classes:
        for cq, ct in col_classes:
            result.append(([i * wq + j for i in rq for j in cq], [u * w + v for u in rt for v in ct]))
    return result


def _plan(machine: str, k: int, hq: int, wq: int, h: int, w: int, c: int, device,
          kept_bytes: int = 0, n: int = 0, bsz: int = 1) -> list[_Group]:
    """Group classes of equal size and choose, per group, how to compute <Q, K>. kept_bytes: the
    largest key table of the compiled CPU kernel (for n training images) that the cache keeps (0:
    no kernel); bsz: images per call."""
    sizes: dict[tuple[int, int], list] = {}
    for pix, pos in _classes(machine, k, hq, wq, h, w):
        sizes.setdefault((len(pix), len(pos)), []).append((pix, pos))
    d_win, d_img = c * k * k, c * h * w
    groups = []
    for (p, s), members in sorted(sizes.items()):
        # per (training image, class): windowed costs P*S*D multiply-adds + reading S*D floats of
        # key table; embedded costs P*S*(C*H*W) multiply-adds and needs no table.
        cheap = (bsz * p >= _KERNEL_MIN_ROWS and len(members) * s * n * (d_win + 1 + c + 2) * 4 <= kept_bytes)
        windowed = p * s * d_win + (_TABLE_READ_COST_KERNEL if cheap else _TABLE_READ_COST) * s * d_win
        embedded = p * s * d_img
        groups.append(
            _Group(
                pix=torch.tensor([m[0] for m in members], dtype=torch.int64, device=device),
                pos=torch.tensor([m[1] for m in members], dtype=torch.int64, device=device),
                embedded=embedded <= windowed,
            )
        )
    return groups


def _weighted(e: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """sum_k e[g, r, k] * vals[g, c, k] -> [G, R, C], as matrix-vector products (much faster on
    the CPU than a batched product with so few columns)."""
    if e.shape[0] == 1:
        return torch.stack([e[0] @ v for v in vals[0]], -1).unsqueeze(0)
    return torch.bmm(e, vals.transpose(1, 2))


def _table(imgs: torch.Tensor, pos: torch.Tensor, k: int, kc: int):
    """Key table of the windows at positions pos [G, S] of imgs [n, C, H, W], in chunks of kc keys.

    Keys are ordered (position, image): key j is image j % n at position pos[:, j // n]. Yields per
    chunk keys [G, D + 1, kc] (transposed for the matrix product; the last row is |K|^2, so that
    one product [c1 Q, c2] @ keys gives the logits) and vals [G, C, kc], the key centres. Only one
    chunk is ever materialised at a time.
    """
    n, c, h, w = imgs.shape
    ng, s = pos.shape
    d = k // 2
    padded = F.pad(imgs, (d, d, d, d)).permute(0, 2, 3, 1)  # [n, H + 2d, W + 2d, C]
    for j0 in range(0, s * n, kc):
        j = torch.arange(j0, min(j0 + kc, s * n), device=imgs.device)  # [kc]
        img = (j % n).expand(ng, -1).reshape(-1)  # [G*kc]
        p = pos[:, j // n].reshape(-1)  # [G*kc]
        keys = torch.empty(ng, c * k * k + 1, j.shape[0], device=imgs.device)  # [G, D + 1, kc]
        keys[:, :-1] = key_windows(padded, img, p, k, w).view(ng, j.shape[0], -1).transpose(1, 2)
        keys[:, -1] = (keys[:, :-1] * keys[:, :-1]).sum(1)
        vals = padded[img, p // w + d, p % w + d].view(ng, j.shape[0], c).permute(0, 2, 1).contiguous()  # [G, C, kc]
        yield keys, vals


_CHUNK = 64  # keys per chunk (and block) of a class's keys for the CPU kernel


def _chunk_table(imgs: torch.Tensor, pos: torch.Tensor, k: int, j0: int = 0, j1: int | None = None,
                 padded: torch.Tensor | None = None):
    """The keys of classes at positions pos [G, S] of imgs [n, C, H, W] for the CPU kernel: all
    classes' keys side by side, packed (cpu_kernel.pack), centres [G, C, NK] and key ids rep [G, NK],
    keys in the order of _table, those from j0 to j1 (default: all S * n; NK: j1 - j0 padded to a
    whole chunk with keys whose logit is hopelessly low). padded: padded_images(imgs, k), if made."""
    n, c, h, w = imgs.shape
    ng, s = pos.shape
    j1 = s * n if j1 is None else j1
    nk = -(-(j1 - j0) // _CHUNK) * _CHUNK
    j = j0 + torch.arange(nk, device=imgs.device)
    img = torch.where(j < j1, j % n, -1)  # [NK], -1: a padding key
    p = pos[:, (j // n).clamp(max=s - 1)]  # [G, NK]
    padded = padded_images(imgs, k) if padded is None else padded
    keys_t = window_table(padded, img.repeat(ng), p.flatten(), k, w, kernel=True)  # [D + 1, G * NK]
    centres = keys_t[centre_entries(c, k, imgs.device)].view(c, ng, nk)  # [C, G, NK]
    rep = torch.where(img >= 0, img * (h * w) + p, -1)  # [G, NK]
    return cpu_kernel.pack(keys_t, _CHUNK), centres.permute(1, 0, 2).contiguous(), rep


def _kernel_classes(queries, chunks, centres, rep, q_idx, running) -> None:
    """Merge the keys of a chunk table (_chunk_table) into the running statistics of the query rows
    of its G classes (queries [G, R, D + 1], rows q_idx [G, R]): a class per thread where there are
    enough classes, else the rows of each class shared out over the threads."""
    ng = queries.shape[0]
    if ng >= torch.get_num_threads():
        cpu_kernel.tile_classes(queries, chunks, _CHUNK, centres, rep, q_idx, running)
        return
    nk = centres.shape[-1]
    blocks = torch.arange(nk // _CHUNK, device=queries.device)
    for gj in range(ng):
        cpu_kernel.tile_blocks(queries[gj], chunks, _CHUNK, centres[gj], None, rep[gj], blocks, q_idx[gj], running,
                               first=gj * nk)


# 64-bit odd multipliers for the window hash (fixed: the hash must be the same in every run)
_HASH_A, _HASH_B, _HASH_C = 0x9E3779B97F4A7C15 - 2**64, 0xC2B2AE3D27D4EB4F - 2**64, 0x165667B19E3779F9


def _window_hash(imgs: torch.Tensor, k: int | None) -> torch.Tensor:
    """A 64-bit hash of the zero-padded k x k window at every pixel: [N, H, W] int64
    (k=None: of each whole image, [N]). Equal windows hash equal, bit for bit; the hash is a
    polynomial in the float bits (integer arithmetic wraps, so the order of sums does not matter)."""
    bits = (imgs + 0.0).contiguous().view(torch.int32).to(torch.int64)  # [N, C, H, W]; -0.0 -> 0.0
    n, c, h, w = bits.shape
    chan = torch.tensor([_pow64(_HASH_C, i + 1) for i in range(c)], device=imgs.device)
    mixed = (bits * chan.view(1, c, 1, 1)).sum(1)  # [N, H, W]
    if k is None:
        weights = torch.tensor([_pow64(_HASH_A, i + 1) for i in range(h * w)], device=imgs.device)
        return (mixed.flatten(1) * weights).sum(1)  # [N]
    if imgs.device.type == "cpu" and cpu_kernel.library() is not None:  # the same sums, 2-5x faster
        return cpu_kernel.window_hash(mixed, k, _HASH_A, _HASH_B)
    d = k // 2
    padded = F.pad(mixed, (d, d, d, d))  # [N, H + 2d, W + 2d]
    rows = torch.zeros(n, h + 2 * d, w, dtype=torch.int64, device=imgs.device)
    for dx in range(k):
        rows += padded[:, :, dx:dx + w] * _pow64(_HASH_A, dx + 1)
    out = torch.zeros(n, h, w, dtype=torch.int64, device=imgs.device)
    for dy in range(k):
        out += rows[:, dy:dy + h, :] * _pow64(_HASH_B, dy + 1)
    return out


def _pow64(base: int, e: int) -> int:
    """base ** e as a wrapped signed 64-bit integer."""
    v = pow(base % 2**64, e, 2**64)
    return v - 2**64 if v >= 2**63 else v


def _train_class(machine: str, k: int, h: int, w: int) -> torch.Tensor:
    """Class of every training position [H, W] (which query pixels may use it); -1: never a key."""
    d = k // 2
    i, j = torch.arange(h).view(h, 1).expand(h, w), torch.arange(w).view(1, w).expand(h, w)
    if machine == "ls":
        return (i * w + j).clone()
    if machine == "els":
        inside = (i >= d) & (i <= h - 1 - d) & (j >= d) & (j <= w - 1 - d)
        return torch.where(inside, 0, -1)
    o = torch.cat([_overhang(i.flatten(), h, d), _overhang(j.flatten(), w, d)], 1)  # [HW, 4]
    return (((o[:, 0] * (k + 1) + o[:, 1]) * (k + 1) + o[:, 2]) * (k + 1) + o[:, 3]).view(h, w)


def _same_count(hashes: torch.Tensor, klass: torch.Tensor) -> torch.Tensor:
    """For each key, the number of keys with the same class and the same window hash."""
    key = hashes * 1000003 + klass  # [N, H, W] (or [N] with klass [1])
    if key.device.type == "cpu" and cpu_kernel.library() is not None:  # a hash table: 2-3x faster than sorting
        return cpu_kernel.same_count(key)
    _, inverse, counts = torch.unique(key.flatten(), return_inverse=True, return_counts=True)
    return counts[inverse].view(key.shape).to(torch.int32)


# ----------------------------------------------------------------------------------------------
# A byte-bounded LRU cache (key tables, subsets, squared norms)
# ----------------------------------------------------------------------------------------------
class _Budget:
    """Bytes that several caches share: when they hold more, the least recently used entry of any
    of them goes. CPU engines made with the default cache_bytes share one (_cpu_budget), so that an
    app holding an engine per set and machine keeps one cache's worth of tables, not one per engine."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.caches: weakref.WeakSet = weakref.WeakSet()
        self.tick = 0  # ticks of use: the smallest is the least recently used entry
        self.lock = threading.RLock()  # the app's engines run in several threads

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in list(self.caches))

    def evict(self, limit: int) -> None:
        """Drop least recently used entries of any cache until the caches hold at most limit bytes."""
        with self.lock:
            held = self.bytes
            while held > limit:
                full = [c for c in list(self.caches) if c._items]
                if not full:
                    return
                oldest = min(full, key=lambda c: next(iter(c._items.values()))[2])
                held -= oldest._pop_oldest()


class _Cache:
    """A byte-bounded LRU cache (key tables, KeySets, hashes, ...); budget: shared with other
    caches (_Budget), or None for a budget of its own of max_bytes."""

    def __init__(self, max_bytes: int, budget: _Budget | None = None):
        self.budget = budget if budget is not None else _Budget(max_bytes)
        self.budget.caches.add(self)
        self._items: OrderedDict = OrderedDict()  # key -> (value, size, tick)
        self.bytes = 0

    @property
    def max_bytes(self) -> int:
        return self.budget.max_bytes

    @staticmethod
    def _size(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (tuple, list)):
            return sum(_Cache._size(v) for v in value)
        if isinstance(value, dict):
            return sum(_Cache._size(v) for v in value.values())
        return 64

    def _next_tick(self) -> int:
        self.budget.tick += 1
        return self.budget.tick

    def get(self, key, make, size_hint: int = 0):
        """The cached value, or make() (kept if it fits). size_hint: bytes make() will need;
        room is made for it first, so the caches and the new value never both hold the peak."""
        lock = self.budget.lock
        with lock:
            if key in self._items:
                value, size, _ = self._items.pop(key)
                self._items[key] = (value, size, self._next_tick())  # now the most recent
                return value
        self.budget.evict(self.max_bytes - min(size_hint, self.max_bytes))
        value = make()  # outside the lock: other engines go on meanwhile
        size = self._size(value)
        if size <= self.max_bytes:
            with lock:
                old = self._items.pop(key, None)
                self.bytes += size - (old[1] if old else 0)
                self._items[key] = (value, size, self._next_tick())
            self.budget.evict(self.max_bytes)
        return value

    def _pop_oldest(self) -> int:
        _, (_, size, _) = self._items.popitem(last=False)
        self.bytes -= size
        return size

    def peek(self, key):
        """(True, the cached value) without making it, or (False, None)."""
        with self.budget.lock:  # (re-entrant: get takes it again)
            if key not in self._items:
                return False, None
            return True, self.get(key, None)

    def clear(self):
        with self.budget.lock:
            self._items.clear()
            self.bytes = 0


_budgets: dict = {}


def _cpu_budget() -> _Budget:
    """The budget that CPU engines with the default cache_bytes share (_cpu_cache_bytes)."""
    return _budgets.get("cpu") or _budgets.setdefault("cpu", _Budget(_cpu_cache_bytes()))  # (setdefault: one, whatever the threads)


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------
def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ElsvizError(f"Unknown device {device!r}: use 'auto', 'cpu' or 'cuda'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ElsvizError("device='cuda' was asked for but no CUDA GPU is available here; use device='cpu' or 'auto'.")
    if dev.type not in ("cpu", "cuda"):
        raise ElsvizError(f"Device {device!r} is not supported: use 'auto', 'cpu' or 'cuda'.")
    return dev


class Engine:
    """One score machine over one training set.

        engine = Engine(train, machine="bbels", device="auto")
        post = engine.denoise(x, t, k)          # x [B, C, H', W']

    cache_bytes bounds the cached key tables (default: on the CPU a sixteenth of the memory, 384 MB
    to 2 GB, shared by all CPU engines of the process that take the default; on a GPU 40% of its
    free memory); chunk_elems bounds each chunk of logits (the working memory is a few times
    chunk_elems floats).
    """

    def __init__(self, train: ImageSet, machine: str = "bbels", device="auto", *,
                 cache_bytes: int | None = None, chunk_elems: int | None = None, compile: bool = False):
        if not isinstance(train, ImageSet):
            raise ElsvizError(f"Engine needs an ImageSet, got {type(train).__name__}; wrap your images in ImageSet(images, labels).")
        machine = as_choice("machine", machine, tuple(MACHINES))
        if device is not None and not isinstance(device, (str, torch.device)):
            raise ElsvizError(f"device must be 'auto', 'cpu', 'cuda' (or a torch.device), got {device!r}.")
        cache_bytes = None if cache_bytes is None else as_int("cache_bytes", cache_bytes, 0)
        chunk_elems = None if chunk_elems is None else as_int("chunk_elems", chunk_elems, 1)
        compile = as_bool("compile", compile)
        self.train = train
        self.machine = machine
        self.device = _resolve_device(device)
        self.images = train.images.to(self.device)  # [N, C, H, W]
        shared = None
        if cache_bytes is None and self.device.type == "cpu":
            shared = _cpu_budget()  # one for all such engines of the process
            cache_bytes = shared.max_bytes
        elif cache_bytes is None:
            cache_bytes = _gpu_cache_bytes(self.device)
        self.chunk_elems = int(chunk_elems or (2**20 if self.device.type == "cpu" else 2**27))
        # queries per tile of the pruned path: small tiles prune more, large ones cost fewer calls
        self._tile = 32
        self._cache = _Cache(int(cache_bytes), shared)
        # torch.compile fuses the per-chunk softmax statistics into one pass. Opt-in: on an H100 it
        # halves ELS on 60,000 images but slows bbELS (many small class shapes, recompiles), and on
        # the CPU it needs a C compiler and recompiles erratically (docs/BENCHMARKS.md)
        self.compile = bool(compile)
        # the fused Triton kernel for key tables (elsviz/triton_kernel.py): on CUDA unless ELSVIZ_KERNEL=torch
        from .triton_kernel import wanted
        self._kernel = wanted(self.device)
        # the compiled pass over chunks of logits on the CPU (elsviz/cpu_kernel.py): on unless
        # ELSVIZ_KERNEL=torch or no C++ compiler is found
        self._cpu_kernel = self.device.type == "cpu" and cpu_kernel.enabled()

    def clear_cache(self) -> None:
        """Forget the cached key tables, tie counts and plans (they are rebuilt when needed)."""
        self._cache.clear()

    def __repr__(self):
        n, c, h, w = self.images.shape
        return f"Engine(machine={self.machine!r}, device={str(self.device)!r}, train={self.train.name!r} [{n}, {c}, {h}, {w}])"

    # -- checks ----------------------------------------------------------------------------------
    def _check(self, x, t, k, label):
        if not isinstance(x, torch.Tensor):
            raise ElsvizError(f"x must be a torch tensor [B, C, H, W], got {type(x).__name__}.")
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.numel() == 0 or x.is_complex():
            raise ElsvizError(f"x must be a real tensor of shape [B, C, H, W] with B, C, H, W >= 1, got "
                              f"{x.dtype} of shape {tuple(x.shape)}.")
        n, c, h, w = self.images.shape
        if x.shape[1] != c:
            raise ElsvizError(
                f"x has {x.shape[1]} channel(s) but the training set {self.train.name!r} has {c}; "
                f"make x [B, {c}, H, W]."
            )
        if not torch.isfinite(x).all():
            raise ElsvizError("x contains NaN or inf values; start from finite noise, e.g. torch.randn.")
        t = check_t(t)
        hq, wq = x.shape[-2:]
        if self.machine == "is":
            k = None
        else:
            k = check_k(k)
        if self.machine in ("is", "ls") and (hq, wq) != (h, w):
            raise ElsvizError(
                f"The {self.machine.upper()} machine only works at the training size {h}x{w}, got x of size {hq}x{wq}; "
                "use ELS or bbELS for other output sizes."
            )
        if self.machine == "els" and k > min(h, w):
            raise ElsvizError(
                f"ELS needs k <= {min(h, w)} (no {k}x{k} window lies inside the {h}x{w} training images); "
                f"pick an odd k <= {_odd_floor(min(h, w))} or use bbELS."
            )
        if self.machine == "bbels":
            for name, q, tr in (("height", hq, h), ("width", wq, w)):
                if q != tr and k > min(q, tr):
                    raise ElsvizError(
                        f"bbELS at an output {name} of {q} (training {tr}) needs k <= {min(q, tr)}, got k={k}: "
                        "some boundary patterns of the output occur nowhere in the training images. "
                        f"Pick an odd k <= {_odd_floor(min(q, tr))} or the training size."
                    )
        subset = self._subset(label)
        return x.to(self.device, torch.float32), t, k, subset

    def _subset(self, label):
        """Indices of the training images in play, or None for all."""
        if label is None:
            return None
        idx = self.train.indices_for(as_label(label))
        return idx.to(self.device)

    # -- the machine -----------------------------------------------------------------------------
    def _rows(self, logits, vals, eager_values, grouped=None):
        """Per-row softmax statistics of a chunk (see _Softmax.rows): by the compiled CPU kernel
        where it serves (grouped [G, C, n]: the values of each group of rows, see cpu_kernel.rows),
        fused when compiling, else torch's passes.

        vals [C, ...broadcastable to logits] for the fused path; eager_values(e) for the eager one.
        """
        if grouped is not None and self._cpu_kernel and cpu_kernel.usable(flat := logits.view(-1, logits.shape[-1]), grouped):
            m, s, acc, ent, arg = cpu_kernel.rows(flat, grouped)
            lead = logits.shape[:-1]
            return m.view(lead), s.view(lead), acc.view(*lead, -1), ent.view(lead), arg.view(lead)
        if self.compile:
            try:
                return _compiled_rows()(logits, vals)
            except Exception as exc:  # no compiler, unsupported backend: stay exact, go eager
                warnings.warn(f"elsviz: torch.compile failed ({type(exc).__name__}: {exc}); using eager mode.")
                self.compile = False
        return _Softmax.rows(logits, eager_values)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, t: float, k=None, label: int | None = None) -> Posterior:
        """Posterior mean and provenance of every pixel of x [B, C, H', W'] at time t, window k."""
        x, t, k, subset = self._check(x, t, k, label)
        a, b = alpha_sigma(t)
        imgs = self._images_of(label, subset)  # [N, C, H, W]
        if self.machine == "is":
            sm = self._ideal(x, a, b, imgs, label)
        else:
            sm = self._local(x, a, b, k, imgs, label)
        return self._finish(x, sm, a, b, t, k, subset, label)

    def _images_of(self, label, subset):
        """The training images in play: all, or those of one label (cached per label)."""
        return self.images if subset is None else self._cache.get(("images", label), lambda: self.images[subset])

    def _finish(self, x, sm: _Softmax, a, b, t, k, subset, label) -> Posterior:
        bsz, c, hq, wq = x.shape
        n, _, h, w = self.images.shape
        entropy = (torch.log(sm.s) - sm.ent / sm.s).clamp(min=0.0)
        if self.machine == "is":
            # one weight per training image, shared by all pixels: [B] -> [B, H', W']
            mean = (sm.acc / sm.s.unsqueeze(-1)).reshape(bsz, c, h, w)
            per_pixel = lambda v: v.reshape(bsz, 1, 1).expand(bsz, hq, wq).contiguous()  # noqa: E731
            rows = torch.arange(hq, device=x.device).view(1, hq, 1).expand(bsz, hq, wq)
            cols = torch.arange(wq, device=x.device).view(1, 1, wq).expand(bsz, hq, wq)
            src_img, src_pos = per_pixel(sm.best), torch.stack([rows, cols], dim=-1)
            count = self._multiplicity(None, label)[sm.best]
            weight, count, entropy = per_pixel(1.0 / sm.s), per_pixel(count), per_pixel(entropy)
        else:
            mean = (sm.acc / sm.s.unsqueeze(-1)).reshape(bsz, hq, wq, c).permute(0, 3, 1, 2).contiguous()
            count = self._multiplicity(k, label).flatten()[sm.best].reshape(bsz, hq, wq)
            img, pos = sm.best // (h * w), sm.best % (h * w)
            src_img = img.reshape(bsz, hq, wq)
            src_pos = torch.stack([pos // w, pos % w], dim=-1).reshape(bsz, hq, wq, 2)
            weight = (1.0 / sm.s).reshape(bsz, hq, wq)
            entropy = entropy.reshape(bsz, hq, wq)
        if subset is not None:
            src_img = subset[src_img]
        score = -(x - a * mean) / (b * b)
        return Posterior(mean, score, src_img, src_pos, weight, count.to(torch.int64), entropy, t, k)

    def _multiplicity(self, k, label) -> torch.Tensor:
        """How many keys of the same class have exactly the window of each key: [N, H, W] int32
        (IS: [N], identical whole images). Computed once per (k, label) from window hashes."""
        def make():
            imgs = self._images_of(label, self._subset(label))
            if k is None:
                return _same_count(_window_hash(imgs, None), torch.zeros(1, dtype=torch.int64, device=imgs.device))
            n, _, h, w = imgs.shape
            return _same_count(self._hashes(k, label), _train_class(self.machine, k, h, w).to(imgs.device))

        return self._cache.get(("mult", self.machine, k, label), make)

    def _ideal(self, x, a, b, imgs, label):
        """IS: whole images are the keys; one softmax per batch item."""
        flat = imgs.flatten(1)  # [N, CHW]
        q = x.flatten(1)  # [B, CHW]
        sm = _Softmax(q.shape[0], q.shape[1], x.device)
        sq = self._cache.get(("is-sq", label), lambda: (flat * flat).sum(-1))  # [N]
        step = max(1, self.chunk_elems // max(q.shape))  # logits [B, step] and images [step, CHW] bounded
        for n0 in range(0, flat.shape[0], step):
            chunk = flat[n0:n0 + step]  # [n, CHW]
            logits = torch.addmm(sq[n0:n0 + step].unsqueeze(0), q, chunk.T, beta=-a * a / (2 * b * b), alpha=a / (b * b))  # [B, n]
            m, s, acc, ent, arg = _Softmax.rows(logits, lambda e: e @ chunk)
            sm.merge(None, m, s, acc, ent, arg + n0)
        return sm

    def _local(self, x, a, b, k, imgs, label):
        """LS, ELS, bbELS: each pixel's softmax over the keys of its class. The batch goes in
        slices whose query windows hold about chunk_elems numbers, so that working memory does not
        grow with the batch (only the per-pixel results do)."""
        bsz, c, hq, wq = x.shape
        _, _, h, w = imgs.shape
        kept = self._cache.max_bytes // _KEPT_SHARE if self._compiled(c) else 0
        n, many = imgs.shape[0], min(bsz, _KERNEL_MIN_ROWS)
        groups = self._cache.get(("plan", self.machine, k, hq, wq, n, kept, many),
                                 lambda: _plan(self.machine, k, hq, wq, h, w, c, x.device, kept, n, many))
        rows = torch.arange(hq * wq, device=x.device) // wq
        cols = torch.arange(hq * wq, device=x.device) % wq
        sm = _Softmax(bsz * hq * wq, c, x.device)
        c1, c2 = a / (b * b), -a * a / (2 * b * b)
        per_slice = max(1, self.chunk_elems // (hq * wq * c * k * k))
        for b0 in range(0, bsz, per_slice):
            qwin = windows(x[b0:b0 + per_slice], rows, cols, k, circular=self.machine == "els")  # [b, P, D]
            part = _Softmax(qwin.shape[0] * hq * wq, c, x.device)
            for gi, g in enumerate(groups):
                keyset = None if g.embedded else self._keyset(g, gi, imgs, k, label, hq, wq, qwin.shape[0])
                if keyset is not None:
                    self._pruned(part, qwin, g, keyset, a, b)
                elif g.embedded:
                    self._embedded(part, qwin, g, imgs, k, c1, c2, label)
                else:
                    self._windowed(part, qwin, g, gi, imgs, k, c1, c2, label, hq, wq)
            sm.put(b0 * hq * wq, part)
        return sm

    # -- big classes: distinct keys, blocks skipped by their bounds (keyset.py) --------------------
    def _keyset(self, g: _Group, gi, imgs, k, label, hq, wq, bsz) -> KeySet | None:
        """The KeySet of a group that is one big class, or None where the plain table serves
        (several classes, a small class, little work per key for bsz images, or distinct keys that
        would not fit the cache)."""
        ng, p = g.pix.shape
        n, c, h, w = imgs.shape
        if (ng != 1 or p * g.pos.shape[1] * n < _PRUNE_MIN_LOGITS or bsz * p * c * k * k < _PRUNE_MIN_WORK
                or imgs.device.type != "cpu" or self._kernel):
            return None  # on a GPU (and with the Triton kernel) distinct keys without blocks serve
        fused = self._compiled(c)
        cache_key = ("keyset", self.machine, k, label, hq, wq, gi, fused)
        held, keyset = self._cache.peek(cache_key)
        if held:
            return keyset
        rep, count = distinct_keys(self._hashes(k, label).flatten(1), g.pos[0], h * w)
        size = KeySet.bytes_needed(rep.shape[0], c * k * k, c)
        if size > self._cache.max_bytes // 2:
            return self._cache.get(cache_key, lambda: None)  # remembered: the plain table serves
        return self._cache.get(cache_key, lambda: KeySet.build(imgs, rep, count, k, kernel=fused), size)

    def _pruned(self, sm, qwin, g: _Group, ks: KeySet, a, b):
        """One big class (docs/ENGINE.md). With the compiled CPU kernel (the KeySet holds its
        chunks), one call: queries sorted by the block their bound likes best; each takes that
        block first, then every block whose bound comes within PRUNE_GAP of the largest logit
        found there (large t: every block), six queries at a time. Otherwise queries go in small
        tiles; per tile their best blocks are computed first (a logit close to the maximum), then
        every other block whose bound comes within PRUNE_GAP of it. Where the first tile needs
        more than 30% of the blocks (gathering them would cost more than it saves) the rest go
        without bounds, in larger tiles. Logits [tile, keys] per chunk."""
        bsz, pq, dim = qwin.shape
        pix = g.pix[0]  # [P]
        queries = qwin[:, pix].reshape(-1, dim)  # [Q = B*P, D]
        rows = (torch.arange(bsz, device=qwin.device).view(bsz, 1) * pq + pix.view(1, -1)).flatten()  # [Q] rows of sm
        qsq = (queries * queries).sum(-1)  # [Q]
        c1, c2 = a / (b * b), -a * a / (2 * b * b)
        aug = torch.cat([c1 * queries, torch.full_like(queries[:, :1], c2)], -1)  # [Q, D + 1]
        nq, nb = queries.shape[0], ks.blocks
        everything = torch.arange(nb, device=qwin.device)
        if ks.chunks is not None:
            proj = queries @ ks.basis.T  # [Q, r]
            bounds = cpu_kernel.Bounds(proj, (queries - proj @ ks.basis).norm(dim=-1), qsq, ks.bound_t, a, b, PRUNE_GAP)
            order = torch.argsort(cpu_kernel.block_home(bounds, nb), stable=True)  # (queries that need a block together)
            cpu_kernel.tile_blocks(aug[order], ks.chunks, ks.block, ks.centres, ks.logc if ks.duplicates else None,
                                   ks.rep, everything, rows[order], (sm.m, sm.s, sm.acc, sm.ent, sm.best),
                                   bounds.take(order))
            return
        piece = max(1, self.chunk_elems // (nb * ks.basis.shape[0]))  # queries per bound computation
        home = torch.cat([ks.upper_logits(queries[i:i + piece], qsq[i:i + piece], a, b).argmax(-1)
                          for i in range(0, nq, piece)])  # [Q] block with the best bound
        order = torch.argsort(home)
        t0, tile = 0, min(nq, self._tile)
        while t0 < nq:
            sel = order[t0:t0 + tile]  # [T]
            r, qa = rows[sel], aug[sel]
            per_chunk = max(1, self.chunk_elems // (sel.shape[0] * ks.block))  # blocks per chunk of logits
            if tile > self._tile:  # dense: every block
                self._blocks(sm, r, qa, ks, everything, per_chunk)
                t0 += tile
                continue
            probe = torch.unique(home[sel])
            self._blocks(sm, r, qa, ks, probe, per_chunk)
            ub = ks.upper_logits(queries[sel], qsq[sel], a, b)  # [T, J]
            need = (ub >= (sm.m[r] - PRUNE_GAP).unsqueeze(1)).any(0)  # [J]
            need[probe] = False
            kept = need.nonzero().squeeze(1)
            self._blocks(sm, r, qa, ks, kept, per_chunk)
            t0 += tile
            if t0 == tile and kept.shape[0] > 0.3 * nb:  # bounds do not pay at this t (gathers cost)
                tile = self._tile * 8

    def _blocks(self, sm, r, qa, ks: KeySet, blocks, per_chunk):
        """Merge the keys of `blocks` into the softmax of the queries r (augmented queries qa [T, D + 1]),
        per_chunk blocks at a time (the torch path)."""
        nblk = blocks.shape[0]
        if nblk == 0:
            return
        breaks = torch.nonzero(torch.diff(blocks) != 1).squeeze(1) + 1
        if breaks.shape[0] <= 16:  # a few runs of consecutive blocks: views of the table
            edges = [0, *breaks.tolist(), nblk]
            firsts = blocks[edges[:-1]].tolist()
            pieces = [ks.span(f + i, f + min(i + per_chunk, e - s_))
                      for f, s_, e in zip(firsts, edges[:-1], edges[1:]) for i in range(0, e - s_, per_chunk)]
        else:  # scattered: gathered chunk by chunk
            pieces = (ks.rows(blocks[i:i + per_chunk]) for i in range(0, nblk, per_chunk))
        for keys_t, vals, rep, logc, centres in pieces:
            logits = torch.mm(qa, keys_t)  # [T, n]
            nt, n = logits.shape
            micro = logits.view(nt, n // MICRO, MICRO)  # runs of MICRO keys
            mmax = micro.amax(-1)  # [T, n / MICRO]
            m, mi = mmax.max(-1)  # [T]: the max, and the first run that holds it
            arg = mi * MICRO + torch.gather(micro, 1, mi.view(nt, 1, 1).expand(nt, 1, MICRO)).squeeze(1).argmax(-1)
            lcm = logc.view(-1, MICRO).amax(-1) if ks.duplicates else 0.0  # [n / MICRO] largest log count
            # runs with any key within 80 of the max (below: exp(-80) ~ 2e-35, nothing next to the max's 1)
            rr, mb = torch.nonzero(mmax + lcm >= (m - 80.0).unsqueeze(1), as_tuple=True)  # [R]
            if 2 * rr.shape[0] < mmax.numel():  # low noise: only those runs
                nv = vals.shape[1]
                lm = micro.view(-1, MICRO).index_select(0, rr * micro.shape[1] + mb)  # [R, MICRO]
                lm.sub_(m.index_select(0, rr).unsqueeze(1))
                if ks.duplicates:
                    lm.add_(logc.view(-1, MICRO).index_select(0, mb))
                lm.clamp_(min=-80.0)
                e = torch.exp(lm)
                v = vals.view(-1, MICRO * nv).index_select(0, mb).view(-1, MICRO, nv)  # [R, MICRO, C + 2]
                part = torch.bmm(e.unsqueeze(1), v).squeeze(1)  # [R, C + 2]
                stats = torch.zeros(nt, vals.shape[1], device=logits.device).index_add_(0, rr, part)
                ent = torch.zeros(nt, device=logits.device).index_add_(0, rr, (e * lm).sum(1)) - stats[:, -1]
            else:
                lm = logits.sub_(m.unsqueeze(-1))  # l - m
                if ks.duplicates:
                    lm.add_(logc)  # + log count: c identical keys weigh c exp(l - m)
                lm.clamp_(min=-80.0)
                e = torch.exp(lm)  # [T, n]
                stats = torch.mm(e, vals)  # [T, C + 2]: sum of weights, weighted centres, sum e log count
                ent = torch.linalg.vecdot(e, lm) - stats[:, -1]
            sm.merge_at(r, m, stats[:, 0], stats[:, 1:-1], ent, rep[arg])

    def _compiled(self, c: int) -> bool:
        """Whether this engine's calls on images of c channels go through the compiled CPU kernel."""
        return self._cpu_kernel and c in cpu_kernel.CHANNELS and cpu_kernel.library() is not None

    def _hashes(self, k, label) -> torch.Tensor:
        """Window hashes of the training images in play: [N, H, W] int64 (cached)."""
        return self._cache.get(("hash", k, label), lambda: _window_hash(self._images_of(label, self._subset(label)), k))

    # -- small classes: a key table per group ---------------------------------------------------
    def _windowed(self, sm, qwin, g: _Group, gi, imgs, k, c1, c2, label, hq, wq):
        """<Q, K> from a key table: logits [G, rows, keys] by batched matrix products, rows in
        tiles so that a chunk holds about chunk_elems logits whatever the batch."""
        bsz, pq, dim = qwin.shape
        n, c, h, w = imgs.shape
        ng, p = g.pix.shape
        s = g.pos.shape[1]
        queries = qwin[:, g.pix].permute(1, 0, 2, 3).reshape(ng, bsz * p, dim)  # [G, B*P, D]
        queries = torch.cat([c1 * queries, torch.full_like(queries[..., :1], c2)], -1)  # [G, B*P, D + 1]
        # query index of each row: b * P' + pixel
        q_idx = (torch.arange(bsz, device=qwin.device).view(1, bsz, 1) * pq + g.pix.view(ng, 1, p)).view(ng, bsz * p)
        if self._kernel:  # fused, no logits written (elsviz/triton_kernel.py); False: it failed, go on
            from . import triton_kernel
            if triton_kernel.windowed(self, sm, queries, q_idx, g, gi, imgs, k, label, hq, wq):
                return
        per_key = ng * (dim + 1 + c + 2) * 4  # bytes of one key of every class
        if self._compiled(c):  # the compiled kernel
            running = (sm.m, sm.s, sm.acc, sm.ent, sm.best)
            if s * n * per_key <= self._cache.max_bytes:  # the table, kept for the next call
                table = self._cache.get(("chunks", self.machine, k, label, hq, wq, gi),
                                        lambda: _chunk_table(imgs, g.pos, k), s * n * per_key)
                _kernel_classes(queries, *table, q_idx, running)
                return
            # too large for the cache (the photos on a machine with little memory): built again at
            # every call, in pieces of an eighth of the cache, merged piece after piece (ties: the
            # earlier key stays, as in one table)
            piece = max(_CHUNK, self._cache.max_bytes // 8 // per_key // _CHUNK * _CHUNK)
            padded = padded_images(imgs, k)  # once for all pieces
            for j0 in range(0, s * n, piece):
                _kernel_classes(queries, *_chunk_table(imgs, g.pos, k, j0, min(j0 + piece, s * n), padded), q_idx,
                                running)
            return
        # rows per tile and keys per chunk: the logits [G, rows, kc] and the keys [G, D, kc] of a
        # chunk each hold at most about chunk_elems numbers
        rt = min(bsz * p, max(p, self.chunk_elems // (32 * ng)))
        kc = max(32, self.chunk_elems // (ng * max(rt, dim)) // 32 * 32)
        table_bytes = ng * s * n * (dim + 1 + c) * 4
        if table_bytes <= self._cache.max_bytes:  # keep the table for next time
            table = self._cache.get(("table", self.machine, k, label, hq, wq, gi, kc),
                                    lambda: list(_table(imgs, g.pos, k, kc)), table_bytes)
            chunks = lambda: table  # noqa: E731
        else:  # built chunk by chunk on every pass
            chunks = lambda: _table(imgs, g.pos, k, kc)  # noqa: E731
        for r0 in range(0, bsz * p, rt):
            qt = queries[:, r0:r0 + rt]  # [G, R, D + 1]
            j0 = 0
            for keys, vals in chunks():  # [G, D + 1, kc] [G, C, kc]
                logits = torch.mm(qt[0], keys[0]).unsqueeze(0) if ng == 1 else torch.bmm(qt, keys)  # [G, R, kc]
                m, ssum, acc, ent, arg = self._rows(logits, vals.transpose(0, 1).unsqueeze(2), lambda e: _weighted(e, vals),
                                                    vals)
                j = arg + j0  # [G, R] key index in the table
                pos = torch.gather(g.pos, 1, j // n)  # [G, R] training position
                best = (j % n) * (h * w) + pos
                sm.merge_at(q_idx[:, r0:r0 + rt].flatten(), m.flatten(), ssum.flatten(), acc.flatten(0, 1),
                            ent.flatten(), best.flatten())
                j0 += keys.shape[-1]

    def _sq_windows(self, imgs, k, label):
        """|K|^2 of the zero-padded k x k window at every position of every image, position-major:
        [H*W, N] (a key position's row is contiguous, so the embedded path gathers whole rows)."""
        def make():
            sq = (imgs * imgs).sum(1, keepdim=True)  # [N, 1, H, W]
            box = F.conv2d(sq, torch.ones(1, 1, k, k, device=imgs.device), padding=k // 2)  # [N, 1, H, W]
            return box.flatten(1).T.contiguous()

        return self._cache.get(("sq", k, label), make)

    def _embedded(self, sm, qwin, g: _Group, imgs, k, c1, c2, label):
        """<Q, K> = <X_n, E(Q, s)>: each query window is placed, at each key position, into an
        otherwise empty training-sized image and multiplied with the whole training images.
        Rows (image of the batch, query pixel, key position) go in tiles of bounded size."""
        bsz, pq, dim = qwin.shape
        n, c, h, w = imgs.shape
        d = k // 2
        ng, p = g.pix.shape
        s = g.pos.shape[1]
        # pairs (query pixel, key position) of all classes of the group: M = G * P * S
        pix = g.pix.unsqueeze(-1).expand(ng, p, s).flatten()  # [M]
        pos = g.pos.unsqueeze(1).expand(ng, p, s).flatten()  # [M]
        m_pairs = pix.shape[0]
        # where each window entry (channel, dy, dx) lands in the flattened image, or the dummy slot
        off = torch.arange(k, device=imgs.device) - d
        rr = (pos // w).view(-1, 1, 1) + off.view(1, k, 1)  # [M, k, 1]
        cc = (pos % w).view(-1, 1, 1) + off.view(1, 1, k)  # [M, 1, k]
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)  # [M, k, k]
        spot = rr * w + cc  # [M, k, k]
        chan = torch.arange(c, device=imgs.device).view(1, c, 1, 1) * (h * w)
        target = torch.where(inside.unsqueeze(1), chan + spot.unsqueeze(1), c * h * w).reshape(m_pairs, dim)  # [M, D]
        sq_all = self._sq_windows(imgs, k, label)  # [H*W, N]
        centres = self._cache.get(("centres", label), lambda: imgs.flatten(2).permute(2, 1, 0).contiguous())  # [H*W, C, N]
        flat = imgs.flatten(1)  # [N, CHW]
        rt = max(1, self.chunk_elems // (c * h * w))  # rows per tile: the embedded queries hold chunk_elems
        step = max(1, self.chunk_elems // min(rt, bsz * m_pairs))  # training images per chunk
        for r0 in range(0, bsz * m_pairs, rt):
            rid = torch.arange(r0, min(r0 + rt, bsz * m_pairs), device=imgs.device)
            bi, mi = rid // m_pairs, rid % m_pairs  # image of the batch, pair
            emb = torch.zeros(rid.shape[0], c * h * w + 1, device=imgs.device)
            emb.scatter_(1, target[mi], qwin[bi, pix[mi]])  # [R, CHW + 1]
            emb = emb[:, :-1]  # [R, CHW]
            q_idx = bi * pq + pix[mi]  # [R]
            for n0 in range(0, n, step):
                xc = flat[n0:n0 + step]  # [n, CHW]
                sq = sq_all[pos[mi], n0:n0 + step]  # [R, n]
                logits = torch.addmm(sq, emb, xc.T, beta=c2, alpha=c1)  # [R, n]
                vals = centres[pos[mi], :, n0:n0 + step]  # [R, C, n] key centres
                per_c = vals.transpose(0, 1)  # [C, R, n]
                m, ssum, acc, ent, arg = self._rows(logits, per_c,
                                                    lambda e: torch.stack([torch.linalg.vecdot(e, v) for v in per_c], -1),
                                                    vals)
                best = (arg + n0) * (h * w) + pos[mi]  # [R]
                sm.merge(q_idx, m, ssum, acc, ent, best)

    # -- explanation of one pixel -------------------------------------------------------------
    @torch.no_grad()
    def explain(self, x: torch.Tensor, t: float, k=None, pixel=(0, 0), top: int = 8, label: int | None = None) -> list[dict]:
        """The top keys of one pixel of x[0]: distinct windows, heaviest first.

        Each entry: image (training index), row, col (the key's centre), weight (of one key),
        count (identical keys sharing that weight), label, patch [C, k, k] (the key's window,
        zero-padded), logit. Identical windows are listed once with their count.
        """
        x, t, k, subset = self._check(x, t, k, label)
        a, b = alpha_sigma(t)
        x = x[:1]
        _, c, hq, wq = x.shape
        n_all, _, h, w = self.images.shape
        i, j = as_pixel(pixel, hq, wq)
        top = as_int("top", top, 1, 10_000, " (how many keys to list)")
        imgs = self._images_of(label, subset)
        n = imgs.shape[0]
        ids = torch.arange(n, device=x.device) if subset is None else subset
        if self.machine == "is":
            flat = imgs.flatten(1)
            logits = (a * (flat @ x.flatten()) - a * a / 2 * (flat * flat).sum(-1)) / (b * b)  # [N]
            keys = flat
            key_img, key_row, key_col = ids, torch.full_like(ids, i), torch.full_like(ids, j)
            patches = imgs
        else:
            p = i * wq + j
            pos = next(torch.tensor(cl[1], device=x.device) for cl in _classes(self.machine, k, hq, wq, h, w) if p in cl[0])
            q = windows(x, torch.tensor([i], device=x.device), torch.tensor([j], device=x.device), k, self.machine == "els")[0, 0]  # [D]
            keys = windows(imgs, pos // w, pos % w, k).transpose(0, 1).reshape(-1, q.shape[0])  # [S*N, D]
            logits = (a * (keys @ q) - a * a / 2 * (keys * keys).sum(-1)) / (b * b)  # [S*N]
            key_img = ids.repeat(pos.shape[0])
            key_row = (pos // w).repeat_interleave(n)
            key_col = (pos % w).repeat_interleave(n)
            patches = keys.view(-1, c, k, k)
        logz = torch.logsumexp(logits, 0)
        out = []
        remaining = logits.clone()
        for _ in range(min(top, logits.shape[0])):
            r = int(torch.argmax(remaining))
            if math.isinf(float(remaining[r])):
                break
            same = (keys == keys[r]).all(-1)  # identical windows share the weight
            remaining[same] = -math.inf
            idx = int(key_img[r])
            out.append({
                "image": idx,
                "row": int(key_row[r]),
                "col": int(key_col[r]),
                "weight": float(torch.exp(logits[r] - logz)),
                "count": int(same.sum()),
                "label": None if self.train.labels is None else int(self.train.labels[idx]),
                "patch": patches[r].reshape(c, -1, patches.shape[-1]).cpu(),
                "logit": float(logits[r]),
            })
        return out


def _odd_floor(v: int) -> int:
    """The largest odd number <= v."""
    return v if v % 2 else v - 1


def _cpu_cache_bytes() -> int:
    """The CPU engine's cache: a sixteenth of the machine's memory, between 384 MB and 2 GB. The
    2,000 colour photos need about 0.6 GB of key tables at k = 5: with 384 MB they were rebuilt
    chunk by chunk at every step (348 s per trajectory on one core of the 2-core Xeon), with 1.5 GB
    a trajectory took 12.6 s on two."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = 0
    return int(min(max(ram // 16, 384 * 2**20), 2 * 2**30))


def _gpu_cache_bytes(device) -> int:
    free, total = torch.cuda.mem_get_info(device)
    return int(min(free, total) * 0.4)
