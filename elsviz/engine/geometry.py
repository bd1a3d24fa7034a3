"""Windows, overhangs and classes: which training positions each query pixel may draw on
(docs/ENGINE.md, "Classes")."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def overhang(i: torch.Tensor, size: int, d: int) -> torch.Tensor:
    """How far the window sticks out before and after the image, per position: [len(i), 2]."""
    return torch.stack([(d - i).clamp(min=0), (i + d - (size - 1)).clamp(min=0)], dim=-1)


def classes(machine: str, k: int, hq: int, wq: int, h: int, w: int) -> list[tuple[list[int], list[int]]]:
    """(query pixels, training positions) of every class, as flat indices."""
    d = k // 2
    if machine == "ls":
        return [([p], [p]) for p in range(h * w)]
    if machine == "els":
        inside = [u * w + v for u in range(d, h - d) for v in range(d, w - d)]
        return [(list(range(hq * wq)), inside)]
    # bbELS: rows and columns each fall into classes by their overhang; a class is a pair.
    def by_overhang(nq: int, nt: int):
        oq = overhang(torch.arange(nq), nq, d).tolist()
        ot = overhang(torch.arange(nt), nt, d).tolist()
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



def train_class(machine: str, k: int, h: int, w: int) -> torch.Tensor:
    """Class of every training position [H, W] (which query pixels may use it); -1: never a key."""
    d = k // 2
    i, j = torch.arange(h).view(h, 1).expand(h, w), torch.arange(w).view(1, w).expand(h, w)
    if machine == "ls":
        return (i * w + j).clone()
    if machine == "els":
        inside = (i >= d) & (i <= h - 1 - d) & (j >= d) & (j <= w - 1 - d)
        return torch.where(inside, 0, -1)
    o = torch.cat([overhang(i.flatten(), h, d), overhang(j.flatten(), w, d)], 1)  # [HW, 4]
    return (((o[:, 0] * (k + 1) + o[:, 1]) * (k + 1) + o[:, 2]) * (k + 1) + o[:, 3]).view(h, w)

