"""Key tables: the windows of a class's keys laid out for a matrix product (torch, the CPU kernel
or the Triton kernel), whole or a slice of keys at a time (docs/ENGINE.md, "Key tables")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import cpu as cpu_kernel

PAD_SQ = 1e30  # |K|^2 of a padding key: its logit c2 * PAD_SQ is hopelessly low


def key_windows(padded: torch.Tensor, img: torch.Tensor, pos: torch.Tensor, k: int, w: int) -> torch.Tensor:
    """The k x k windows of keys (image img[m], flat position pos[m]) -> [M, C*k*k], ordered
    (channel, row, col). padded: the training images zero-padded by k // 2, as [n, H+2d, W+2d, C]."""
    padded = padded.contiguous()
    n, hp, wp, c = padded.shape
    # every window as a view [n, H, W, k, k, C] of the padded images; one gather picks the keys'
    # (twice as fast as indexing rows and columns separately)
    every = padded.as_strided((n, hp - k + 1, w, k, k, c), (hp * wp * c, wp * c, c, wp * c, c, 1))
    win = every[img, pos // w, pos % w]  # [M, k, k, C]
    return win.permute(0, 3, 1, 2).reshape(img.shape[0], -1)


def padded_images(imgs: torch.Tensor, k: int) -> torch.Tensor:
    """The images [n, C, H, W] zero-padded by k // 2, channels last: [n, H + 2d, W + 2d, C] (what
    key_windows and window_table read)."""
    d = k // 2
    return F.pad(imgs, (d, d, d, d)).permute(0, 2, 3, 1).contiguous()


def gather_layout(imgs: torch.Tensor, k: int):
    """What the Triton kernel's gather reads instead of a key table (triton_kernel.gather_stats):
    the images [n, C, H, W] zero-padded by d = k // 2 and laid out [H + 2d, W + 2d, C, n] (the
    keys of one position, consecutive in the dense order, are consecutive floats), and |K|^2 of the
    window at every position of every image, [H*W, n]. The squares are summed as box sums, first
    along rows, then along columns, then over channels: every window's sum is a function of its
    entries alone, so identical windows get identical |K|^2, bit for bit, and tie exactly as they
    do in a table."""
    n, c, h, w = imgs.shape
    d = k // 2
    padded = F.pad(imgs, (d, d, d, d)).permute(2, 3, 1, 0).contiguous()  # [H + 2d, W + 2d, C, n]
    squares = padded * padded
    rows = squares[:, 0:w].clone()  # [H + 2d, W, C, n]
    for dx in range(1, k):
        rows += squares[:, dx:dx + w]
    box = rows[0:h].clone()  # [H, W, C, n]
    for dy in range(1, k):
        box += rows[dy:dy + h]
    sq = box[:, :, 0].clone()  # [H, W, n]
    for ch in range(1, c):
        sq += box[:, :, ch]
    return padded, sq.view(h * w, n)


def centre_entries(c: int, k: int, device=None) -> torch.Tensor:
    """The rows of a window table (window_table) that hold a window's centre pixel, one per channel."""
    d = k // 2
    return torch.arange(c, device=device) * (k * k) + d * k + d


def window_table(padded: torch.Tensor, img: torch.Tensor, pos: torch.Tensor, k: int, w: int,
                 kernel: bool = False) -> torch.Tensor:
    """keys_t [C*k*k + 1, M]: each column the window of a key (as key_windows) and then |K|^2;
    img[m] = -1: a padding key, zeros and |K|^2 = PAD_SQ. kernel=True: built by the CPU kernel
    (cpu_kernel.key_table: 64 keys at a time straight into this layout; on digits 1-2x torch's
    gathers alone, and with the transposed copy and the padding torch needs besides, 2-4x)."""
    if kernel:
        return cpu_kernel.key_table(padded, img, pos, k, w, PAD_SQ)
    real = img >= 0
    win = key_windows(padded, img.clamp(min=0), pos, k, w) * real.unsqueeze(1)  # [M, D]
    sq = torch.where(real, (win * win).sum(-1), PAD_SQ)
    return torch.cat([win.T, sq.unsqueeze(0)])


def torch_table(imgs: torch.Tensor, pos: torch.Tensor, k: int, kc: int):
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


CHUNK = 64  # keys per chunk (and block) of a class's keys for the CPU kernel


def cpu_table(imgs: torch.Tensor, pos: torch.Tensor, k: int, j0: int = 0, j1: int | None = None,
                 padded: torch.Tensor | None = None):
    """The keys of classes at positions pos [G, S] of imgs [n, C, H, W] for the CPU kernel: all
    classes' keys side by side, packed (cpu_kernel.pack), centres [G, C, NK] and key ids rep [G, NK],
    keys in the order of _table, those from j0 to j1 (default: all S * n; NK: j1 - j0 padded to a
    whole chunk with keys whose logit is hopelessly low). padded: padded_images(imgs, k), if made."""
    n, c, h, w = imgs.shape
    ng, s = pos.shape
    j1 = s * n if j1 is None else j1
    nk = -(-(j1 - j0) // CHUNK) * CHUNK
    j = j0 + torch.arange(nk, device=imgs.device)
    img = torch.where(j < j1, j % n, -1)  # [NK], -1: a padding key
    p = pos[:, (j // n).clamp(max=s - 1)]  # [G, NK]
    padded = padded_images(imgs, k) if padded is None else padded
    keys_t = window_table(padded, img.repeat(ng), p.flatten(), k, w, kernel=True)  # [D + 1, G * NK]
    centres = keys_t[centre_entries(c, k, imgs.device)].view(c, ng, nk)  # [C, G, NK]
    rep = torch.where(img >= 0, img * (h * w) + p, -1)  # [G, NK]
    return cpu_kernel.pack(keys_t, CHUNK), centres.permute(1, 0, 2).contiguous(), rep

