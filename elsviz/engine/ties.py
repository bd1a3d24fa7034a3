"""Identical windows: bit-exact window hashes, tie counts and distinct keys (docs/ENGINE.md,
"Ties")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import cpu as cpu_kernel

# 64-bit odd multipliers for the window hash (fixed: the hash must be the same in every run)
_HASH_A, _HASH_B, _HASH_C = 0x9E3779B97F4A7C15 - 2**64, 0xC2B2AE3D27D4EB4F - 2**64, 0x165667B19E3779F9


def window_hash(imgs: torch.Tensor, k: int | None) -> torch.Tensor:
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



def window_keys(hashes: torch.Tensor, klass: torch.Tensor) -> torch.Tensor:
    """One int64 per key for (window hash, class): equal exactly where both are (up to the hash)."""
    return hashes * 1000003 + klass  # [N, H, W] (or [N] with klass [1])


def same_count(hashes: torch.Tensor, klass: torch.Tensor) -> torch.Tensor:
    """For each key, the number of keys with the same class and the same window hash."""
    key = window_keys(hashes, klass)
    if key.device.type == "cpu" and cpu_kernel.library() is not None:  # a hash table: 2-3x faster than sorting
        return cpu_kernel.same_count(key)
    _, inverse, counts = torch.unique(key.flatten(), return_inverse=True, return_counts=True)
    return counts[inverse].view(key.shape).to(torch.int32)



def distinct_keys(hashes: torch.Tensor, pos: torch.Tensor, hw: int, in_order: bool = False):
    """Distinct windows among the keys (every image at every position of pos [S]).

    hashes: [n, H*W] window hashes. Returns rep [Kd] (key id n * H*W + position of the first
    key with that window, keys ordered (position, image) as in the dense path) and count [Kd];
    in_order: sorted by that first key's place in the dense order (else by hash).
    """
    n = hashes.shape[0]
    h = hashes[:, pos].T.reshape(-1)  # [S*n], key j = image j % n at position pos[j // n]
    _, inverse, count = torch.unique(h, return_inverse=True, return_counts=True)
    order = torch.arange(h.shape[0], device=h.device)
    first = torch.full((count.shape[0],), h.shape[0], device=h.device).scatter_reduce(0, inverse, order, "amin")
    if in_order:
        first, by_first = torch.sort(first)
        count = count[by_first]
    rep = (first % n) * hw + pos[first // n]
    return rep, count


def first_table(keys: torch.Tensor, keep: torch.Tensor | None = None):
    """The first key of every window, in the dense order of the keys (position, then image).

    keys [N, P]: window_keys of N images at P positions (P = 1: whole images); keep [N, P] bool:
    only these keys enter (None: all). Returns (values [U] sorted, first [U], count [U]): each
    distinct value, the dense index pos * N + image of its first key, and how many keys hold it.
    One stable sort: equal values keep the dense order, so each run starts with its first key."""
    n = keys.shape[0]
    flat = keys.reshape(n, -1).T.reshape(-1)  # [P * N], dense order
    idx = None
    if keep is not None:
        idx = torch.nonzero(keep.reshape(n, -1).T.reshape(-1)).flatten()
        flat = flat[idx]
    values, order = torch.sort(flat, stable=True)
    values, count = torch.unique_consecutive(values, return_counts=True)
    first = order[torch.cumsum(count, 0) - count]
    return values, first if idx is None else idx[first], count


def find_first(table, values: torch.Tensor):
    """(first dense index, count) of each of values [Q] in a first_table; (-1, 0) where absent."""
    known, first, count = table
    if known.numel() == 0:
        return torch.full_like(values, -1), torch.zeros_like(values)
    at = torch.searchsorted(known, values).clamp_(max=known.numel() - 1)
    found = known[at] == values
    return torch.where(found, first[at], -1), torch.where(found, count[at], 0)

