"""Runs and what they say: run specs, a bounded run cache, and the provenance summaries the app shows.

Everything here is plain Python and PyTorch (no Streamlit): the pages call it, tests check it.

Provenance vocabulary (docs/THEORY.md, "Provenance"): for each output pixel the engine names the key
(training image `source_index`, centre `source_pos`) with the largest weight. A pixel whose winning
window is matched by several identical keys (`source_count > 1`, e.g. flat background) is *shared*:
it has no single source and is never attributed to one of them.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from .engine import windows
from .errors import ElsvizError
from .sampling import sample
from .schedule import locality_schedule

MACHINES = ("is", "ls", "els", "bbels")
MACHINE_NAMES = {"is": "IS", "ls": "LS", "els": "ELS", "bbels": "bbELS"}
MACHINE_SENTENCES = {
    "is": "Ideal score: assumes nothing about images, so it can only give back a whole training image "
          "(it memorises).",
    "ls": "Local score: each pixel sees only its k x k neighbourhood and copies from the same place in "
          "the training images.",
    "els": "Equivariant local score: each pixel sees only its k x k neighbourhood and may copy a patch "
           "from anywhere in any training image (edges wrap around).",
    "bbels": "Boundary-broken ELS: like ELS, but a window that sticks out of the image border may only "
             "copy patches from the same border position, as zero-padded CNNs do.",
}


# -- what to run ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One run of the reverse process: hashable, so it keys caches.

    k: an odd int, a tuple of `steps` ints, or a preset name. size: (H, W) of the output, or None
    for the training size (only ELS and bbELS may change it).
    """

    machine: str = "bbels"
    k: int | tuple[int, ...] | str = 5
    steps: int = 20
    seed: int = 0
    label: int | None = None
    size: tuple[int, int] | None = None

    def schedule(self) -> list[int]:
        """k[0..steps-1] (raises ElsvizError for a bad k)."""
        return locality_schedule(list(self.k) if isinstance(self.k, tuple) else self.k, self.steps)

    def differences(self, other: "RunSpec") -> str:
        """What sets this spec apart from other, briefly ('k=7', 'ELS, seed 3'); '' when equal."""
        mine, theirs = self.describe().split(", "), other.describe().split(", ")
        return ", ".join(m for m in mine if m not in theirs)

    def describe(self) -> str:
        """A short caption: 'bbELS, k=5, 20 steps, seed 0'."""
        if self.machine == "is":
            loc = "no window"
        elif isinstance(self.k, str):
            loc = f"schedule {self.k}"
        elif isinstance(self.k, tuple):
            loc = f"k={min(self.k)}..{max(self.k)} per step"
        else:
            loc = f"k={self.k}"
        size = "" if self.size is None else f", {self.size[0]}x{self.size[1]}"
        return f"{MACHINE_NAMES.get(self.machine, self.machine)}, {loc}, {self.steps} steps, seed {self.seed}{size}"


def run(engine, spec: RunSpec, callback: Callable | None = None):
    """sample() the spec on the engine; returns the Trajectory."""
    k = list(spec.k) if isinstance(spec.k, tuple) else spec.k
    shape = None if spec.size is None else (engine.train.channels, *spec.size)
    return sample(engine, steps=spec.steps, k=k, label=spec.label, callback=callback, seed=spec.seed, shape=shape)


@dataclass
class Result:
    """A finished run with what made it: the app keeps the last good one on screen after an error."""

    dataset_key: Hashable
    train: object  # ImageSet
    engine: object  # Engine
    spec: RunSpec
    traj: object  # Trajectory
    seconds: float

    def differences(self, other: "Result") -> str:
        """What sets this result apart from other ('k=7', 'hands, bbELS'); 'same settings' if nothing."""
        parts = [self.train.name] if self.dataset_key != other.dataset_key else []
        spec = self.spec.differences(other.spec)
        return ", ".join(parts + ([spec] if spec else [])) or "same settings"


class RunCache:
    """A bounded, thread-safe least-recently-used map (the app keeps runs in it per parameter set)."""

    def __init__(self, maxsize: int = 64):
        self.maxsize = maxsize
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def fetch(self, key, make):
        """The value under key, made by make() and kept the first time."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def __len__(self) -> int:
        return len(self._items)


def timed(fn, *args, **kwargs):
    """(fn(*args, **kwargs), seconds)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# -- how long will it take -------------------------------------------------------------------------
def run_cost(n: int, shape: tuple[int, int, int], spec: RunSpec) -> float:
    """A work count for a run: keys x query pixels x channels x steps.

    shape: (C, H, W) of the training images. Used only to compare runs (see Throughput), so the
    engine's constant factors cancel; the window size k is left out because the engine's time
    hardly grows with it (larger windows leave fewer keys per pixel for ELS and bbELS).
    """
    c, h, w = shape
    hq, wq = spec.size or (h, w)
    keys = n if spec.machine in ("is", "ls") else n * h * w
    pixels = 1 if spec.machine == "is" else hq * wq
    return float((spec.steps - 1) * keys * pixels * c)


class Throughput:
    """Work done per second, learned from the runs the app has timed.

    The estimate uses the best recent rate: a slow run (a cold start that builds key tables, a
    busy machine) says little about what the machine can do, and a too-cautious estimate would
    hold up ordinary runs behind a "this will take long" question.
    """

    def __init__(self, guess: float = 1e9):
        self._rates: list[float] = []
        self.guess = guess

    def record(self, cost: float, seconds: float) -> None:
        if seconds > 0.05 and cost > 0:
            self._rates = (self._rates + [cost / seconds])[-9:]

    @property
    def rate(self) -> float:
        return max(self._rates) if self._rates else self.guess

    def seconds(self, cost: float) -> float:
        return cost / self.rate


def subset_size(n: int, estimate_s: float, target_s: float) -> int:
    """How many of n training images give a run of about target_s, if n of them take estimate_s."""
    if estimate_s <= target_s:
        return n
    return max(1, min(n, int(n * target_s / estimate_s)))


# -- locality -------------------------------------------------------------------------------------
def k_limit(machine: str, train_hw: tuple[int, int], out_hw: tuple[int, int] | None = None) -> int | None:
    """The largest k worth offering (odd): ELS needs windows inside the training images; bbELS at
    another size needs k no larger than either size; LS and bbELS at the training size take any k
    but change nothing beyond 2 * max(H, W) - 1 (every window then covers the image). IS: None."""
    h, w = train_hw
    out_hw = out_hw or train_hw
    if machine == "is":
        return None
    if machine == "els":
        lim = min(h, w)
    elif machine == "bbels" and tuple(out_hw) != tuple(train_hw):
        lim = min(h, w, *out_hw)
    else:
        lim = 2 * max(h, w) - 1
    return lim if lim % 2 else lim - 1


def k_sweep(machine: str, train_hw: tuple[int, int], out_hw: tuple[int, int] | None = None) -> list[int]:
    """k = 1, 3, 5, ... up to the image size (the first odd k >= the output's larger side), within k_limit."""
    out_hw = out_hw or train_hw
    lim = k_limit(machine, train_hw, out_hw)
    top = max(out_hw) if max(out_hw) % 2 else max(out_hw) + 1
    if lim is not None:
        top = min(top, lim)
    return list(range(1, top + 1, 2))


# -- provenance -----------------------------------------------------------------------------------
def shared_mask(source_count: torch.Tensor) -> torch.Tensor:
    """[..., H, W] bool: pixels whose winning window is shared by identical keys (no single source)."""
    return source_count > 1


def source_shares(source_index: torch.Tensor, source_count: torch.Tensor) -> list[tuple[int, int]]:
    """[(training image, pixels it supplies), ...] over the attributed pixels, most pixels first.

    source_index, source_count: [H, W] (one image of a batch).
    """
    idx = source_index[~shared_mask(source_count)]  # [P_attributed]
    if idx.numel() == 0:
        return []
    images, counts = torch.unique(idx, return_counts=True)
    order = torch.argsort(counts, descending=True, stable=True)
    return [(int(images[o]), int(counts[o])) for o in order]


def distinct_sources(source_index: torch.Tensor, source_count: torch.Tensor) -> int:
    """How many distinct training images the attributed pixels of one image [H, W] are copied from."""
    return len(source_shares(source_index, source_count))


def seams(source_index: torch.Tensor, source_pos: torch.Tensor, source_count: torch.Tensor):
    """Where the patch mosaic changes patch, between neighbouring attributed pixels.

    Two neighbours belong to the same piece when they are copied from the same training image at
    positions as far apart as the pixels themselves (a consistent copy); otherwise a seam runs
    between them. Shared pixels (no single source) make no seams.
    source_index [H, W], source_pos [H, W, 2], source_count [H, W] ->
    (between columns j and j+1: bool [H, W-1], between rows i and i+1: bool [H-1, W]).
    """
    attributed = ~shared_mask(source_count)  # [H, W]

    def cut(a, b, pa, pb, offset, both):
        same = (a == b) & ((pb - pa) == torch.tensor(offset, device=pa.device)).all(-1)
        return both & ~same

    vertical = cut(source_index[:, :-1], source_index[:, 1:], source_pos[:, :-1], source_pos[:, 1:], (0, 1),
                   attributed[:, :-1] & attributed[:, 1:])  # [H, W-1]
    horizontal = cut(source_index[:-1], source_index[1:], source_pos[:-1], source_pos[1:], (1, 0),
                     attributed[:-1] & attributed[1:])  # [H-1, W]
    return vertical, horizontal


def mosaic(images: torch.Tensor, source_index: torch.Tensor, source_pos: torch.Tensor) -> torch.Tensor:
    """Rebuild an image from the centre pixels of its winning keys.

    images [N, C, H, W] (the training set), source_index [B, H', W'], source_pos [B, H', W', 2]
    -> [B, C, H', W']. At the last step this is the output itself (docs/THEORY.md: each pixel copies
    the centre of its heaviest key), shared pixels included (identical windows, identical centres).
    """
    idx = source_index.to(images.device)
    pos = source_pos.to(images.device)
    pix = images[idx, :, pos[..., 0], pos[..., 1]]  # [B, H', W', C]
    return pix.permute(0, 3, 1, 2).contiguous()  # [B, C, H', W']


def patch(image: torch.Tensor, row: int, col: int, k: int) -> torch.Tensor:
    """The k x k window of image [C, H, W] centred on (row, col) -> [C, k, k].

    Outside the image it is zero-padded (0 = mid grey in [-1, 1]), as the LS and bbELS machines pad.
    """
    c = image.shape[0]
    win = windows(image[None], torch.tensor([row]), torch.tensor([col]), k)  # [1, 1, C*k*k]
    return win.view(c, k, k)


def pixel_from_click(click: dict | None, shape: tuple[int, int]) -> tuple[int, int] | None:
    """(row, col) of the image pixel under a click {x, y, width, height} on a drawing of an H x W image."""
    if not click or "x" not in click:
        return None
    h, w = shape
    dw = click.get("width") or w
    dh = click.get("height") or h
    col = int(math.floor(click["x"] * w / dw))
    row = int(math.floor(click["y"] * h / dh))
    return min(max(row, 0), h - 1), min(max(col, 0), w - 1)


def changed_fraction(a: torch.Tensor, b: torch.Tensor, tol: float = 0.05) -> float:
    """Fraction of pixels of two images [C, H, W] that differ by more than tol (any channel)."""
    return float(((a - b).abs().amax(0) > tol).float().mean())
