"""What the "Extra fingers" page computes besides the finger counter itself (elsviz.analysis.fingers):
turning a user's images into silhouettes, checking that a set holds hands, the copied pieces of a
mosaic and the training patches they are made of, a region's timeline across the steps, and the
study's time estimate. Plain numpy / torch / scikit-image, no Streamlit; tests/test_fingers_view.py.

Vocabulary as in elsviz.analysis.provenance: a pixel is *attributed* when one key wins its window (source_count
== 1), *shared* otherwise (flat background: identical keys tie, no single source).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import ElsvizError
from ..analysis.fingers import DEFAULT_STUDY, HAND, MIN_SIZE, count_fingers, extra_fingers, fix_cover
from ..imageset import ImageSet
from ..machines import k_limit, MACHINE_NAMES
from ..analysis.provenance import seams, shared_mask
from ..schedule import PRESETS, check_k
from ..sampling import Frame, Trajectory

BINARY_SHARE = 0.8  # a silhouette set has at least this share of its pixels near -1 or 1

STUDY_STEPS = tuple(sorted({5, 8, 10, 15, 20, 30, DEFAULT_STUDY.steps}))  # the study's choices of steps per hand


# -- silhouettes ---------------------------------------------------------------------------------
def silhouette_problem(train: ImageSet) -> str:
    """'' when train holds grey silhouettes the counter can read (white on black, >= 24x24, nearly
    two-valued), else what is wrong, in words for the user."""
    c, h, w = train.shape
    if min(h, w) < MIN_SIZE:
        return (f"{train.name} is {h}x{w}: fingers need at least {MIN_SIZE}x{MIN_SIZE} pixels. "
                f"Resize it (Resize / subset in the sidebar, 32 works) or pick the hands set.")
    if c != 1:
        return f"{train.name} is in colour: the page thresholds it into silhouettes first."
    x = train.images[: min(len(train), 256)]
    if float((x.abs() > 0.9).float().mean()) < BINARY_SHARE:
        return f"{train.name} is not black and white: the page thresholds it into silhouettes first."
    return ""


def silhouettes(train: ImageSet, threshold: float | None = None) -> ImageSet:
    """train as white-on-black silhouettes: grey (mean of the channels), thresholded, values -1 / 1.

    threshold: in [-1, 1]; None picks one per image (Otsu's). The side of the threshold that covers
    less of the picture's border is the hand (a dark hand on a light table comes out white).
    """
    from skimage.filters import threshold_otsu  # here: the app's first page needs none of skimage
    if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
        raise ElsvizError(f"threshold must lie in [-1, 1] (the images' range), got {threshold!r}.")
    grey = train.images.float().mean(1).numpy()  # [N, H, W]
    out = np.empty_like(grey)
    for n, g in enumerate(grey):
        level = float(threshold) if threshold is not None else (threshold_otsu(g) if g.max() > g.min() else g.max())
        ink = g > level
        border = np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])
        if border.mean() > 0.5:
            ink = ~ink
        out[n] = np.where(ink, 1.0, -1.0)
    how = f"at {threshold:+.2f}" if threshold is not None else "at each image's Otsu threshold"
    return replace(train, images=torch.from_numpy(out[:, None]).float(), name=f"{train.name} (silhouettes)",
                   description=f"{train.description} Thresholded into silhouettes {how}.".strip())


HAND_FINGERS = range(3, 8)  # what a training image must count to pass as a hand (the generator's range)
CHECK_ALL = 500  # hand_check counts every image of a set up to this size, else this many spread over it: the
# counter takes about 4 ms an image (measured: 200 hands 0.8 s, 1,000 hands 3.3 s on the 2-core CPU)


@dataclass
class HandCheck:
    """Finger counts of (some of) a training set's images: is it a set of hands at all?

    checked: images counted; total: images in the set (checked < total: an even sample of it).
    counts: fingers -> images (0 = not a hand); reasons: why images are not hands (the counter's
    reason up to its colon, e.g. "no fingers") -> images; example: one full reason.
    """

    checked: int
    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    example: str = ""
    total: int | None = None

    @property
    def hands(self) -> int:
        """Images that read as a hand: 3 to 7 fingers."""
        return sum(n for f, n in self.counts.items() if f in HAND_FINGERS)

    @property
    def usable(self) -> bool:
        """At least half of the checked images read as hands."""
        return self.checked > 0 and 2 * self.hands >= self.checked

    def describe(self) -> str:
        if not self.checked:
            return "No images to check."
        total = self.checked if self.total is None else self.total
        common = ", ".join(f"{n:,} with {f}" for f, n in self.counts.most_common(4) if f)
        if self.checked < total:
            text = (f"{self.hands:,} of {self.checked:,} training images read as hands (3 to 7 fingers), a sample "
                    f"spread evenly over the {total:,}")
        elif self.hands == total:
            text = f"all {total:,} training images read as hands (3 to 7 fingers)"
        else:
            text = f"{self.hands:,} of all {total:,} training images read as hands (3 to 7 fingers)"
        text = text[0].upper() + text[1:]
        text += f": {common} fingers." if common else "."
        if self.reasons:
            text += " Not hands at all: " + ", ".join(f"{n:,} {r}" for r, n in self.reasons.most_common(3)) + "."
        return text


def hand_check(images: torch.Tensor, n: int = CHECK_ALL) -> HandCheck:
    """count_fingers on images [N, 1, H, W]: all of them when N <= n, else n evenly spread over the set."""
    total = images.shape[0]
    take = np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int)) if total else []
    check = HandCheck(len(take), total=total)
    for i in take:
        fc = count_fingers(images[int(i)])
        check.counts[fc.count] += 1
        if fc.reason:
            check.reasons[fc.reason.split(":")[0]] += 1
            check.example = check.example or fc.reason
    return check


# -- pieces of the mosaic ------------------------------------------------------------------------
def pieces(source_index: torch.Tensor, source_pos: torch.Tensor, source_count: torch.Tensor) -> np.ndarray:
    """int32 [H, W]: the copied pieces of a mosaic, one label per piece (1, 2, ...), 0 on shared pixels.

    A piece is a connected set of attributed pixels copied from one training image at one offset:
    neighbours with no seam between them (elsviz.analysis.provenance.seams). Computed as connected components on a
    grid twice as fine, whose odd cells say whether two neighbours are joined.
    source_index, source_count [H, W]; source_pos [H, W, 2].
    """
    from scipy import ndimage
    vertical, horizontal = (m.numpy() for m in seams(source_index.cpu(), source_pos.cpu(), source_count.cpu()))
    attributed = ~shared_mask(source_count.cpu()).numpy()  # [H, W]
    h, w = attributed.shape
    fine = np.zeros((2 * h - 1, 2 * w - 1), dtype=bool)  # [2H-1, 2W-1]
    fine[::2, ::2] = attributed
    fine[::2, 1::2] = attributed[:, :-1] & attributed[:, 1:] & ~vertical  # joins (i, j) and (i, j+1)
    fine[1::2, ::2] = attributed[:-1] & attributed[1:] & ~horizontal  # joins (i, j) and (i+1, j)
    labels, _ = ndimage.label(fine)  # 4-connected
    coarse = labels[::2, ::2]  # [H, W]
    out = np.zeros((h, w), dtype=np.int32)  # shared pixels stay 0; pieces 1..n in reading order
    out[coarse > 0] = np.searchsorted(np.unique(coarse[coarse > 0]), coarse[coarse > 0]) + 1
    return out


def _frame_maps(frame: Frame, batch: int):
    if frame.source_index is None:
        raise ElsvizError("This run has no provenance (its denoiser does not name training patches).")
    return (frame.source_index[batch].cpu(), frame.source_pos[batch].cpu(), frame.source_count[batch].cpu(),
            frame.source_weight[batch].cpu())


def _mask(mask, shape) -> np.ndarray:
    m = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.shape != tuple(shape) or m.dtype != bool:
        raise ElsvizError(f"mask must be a bool array [H, W] = {list(shape)}, got {m.dtype} of shape {m.shape}.")
    return m


def piece_patches(frame: Frame, mask, batch: int = 0) -> tuple[list[dict], int]:
    """The training patches a region of the picture is made of: ([patch, ...], shared pixels).

    mask: bool [H, W], the region (a finger, a piece). Its attributed pixels are grouped by where
    they were copied from: training image and offset (source position minus pixel position); each
    group is one patch copied whole. Each patch: image, offset (rows, cols), pixels (how many),
    box (top, left, bottom, right) in the training image, weight (mean winning weight).
    Largest first.
    """
    idx, pos, cnt, wgt = _frame_maps(frame, batch)
    m = _mask(mask, idx.shape) & ~shared_mask(cnt).numpy()
    rows, cols = np.nonzero(m)
    src, p, wt = idx.numpy()[rows, cols], pos.numpy()[rows, cols], wgt.numpy()[rows, cols]
    groups: dict[tuple, list[int]] = {}
    for n, (s, pr, pc, r, c) in enumerate(zip(src, p[:, 0], p[:, 1], rows, cols)):
        groups.setdefault((int(s), int(pr - r), int(pc - c)), []).append(n)
    out = []
    for (s, dr, dc), members in groups.items():
        pr, pc = p[members, 0], p[members, 1]
        out.append({"image": s, "offset": (dr, dc), "pixels": len(members),
                    "box": (int(pr.min()), int(pc.min()), int(pr.max()), int(pc.max())),
                    "weight": float(wt[members].mean())})
    out.sort(key=lambda d: (-d["pixels"], d["image"]))
    shared = int((_mask(mask, idx.shape) & shared_mask(cnt).numpy()).sum())
    return out, shared


def patch_caption(patch: dict) -> str:
    """'#412 rows 3-9, cols 10-14: 23 px' for one of piece_patches' patches."""
    top, left, bottom, right = patch["box"]
    return f"#{patch['image']} rows {top}-{bottom}, cols {left}-{right}: {patch['pixels']} px"


def patches_sentence(patches: list[dict], shared: int) -> str:
    """What piece_patches found, in a sentence."""
    if not patches:
        return ("All its pixels are shared: their windows match many identical training patches (flat background), "
                "so no single source.") if shared else "No pixels selected."
    images = len({p["image"] for p in patches})
    text = (f"Made of {len(patches)} copied patch{'es' if len(patches) > 1 else ''} from {images} training "
            f"image{'s' if images > 1 else ''}")
    text += f", and {shared} shared pixel{'s' if shared > 1 else ''}." if shared else "."
    if len(patches) == 1:
        text += " One patch copied whole: a single piece of the mosaic."
    return text


def timeline(traj: Trajectory, mask, batch: int = 0) -> list[dict]:
    """A region's provenance at every step (most noise first): what it leaned towards and how sure.

    Each entry: step, t, k, image (the training image most of its attributed pixels lean towards;
    None when all are shared), share (of the region's pixels on that image), weight (mean winning
    weight), entropy (mean, nats), shared (share of shared pixels), switched (image differs from the
    step before). mask: bool [H, W]; one pixel is a region too.
    """
    out, before = [], None
    for f in traj.frames:
        idx, _, cnt, wgt = _frame_maps(f, batch)
        m = _mask(mask, idx.shape)
        size = max(int(m.sum()), 1)
        attributed = m & ~shared_mask(cnt).numpy()
        votes = Counter(idx.numpy()[attributed].tolist())
        image, n = votes.most_common(1)[0] if votes else (None, 0)
        ent = f.entropy[batch].cpu().numpy()[m] if f.entropy is not None else np.zeros(1)
        out.append({"step": f.i, "t": f.t, "k": f.k, "image": image, "share": n / size,
                    "weight": float(wgt.numpy()[m].mean()) if m.any() else 0.0,
                    "entropy": float(ent.mean()) if ent.size else 0.0,
                    "shared": float((m & shared_mask(cnt).numpy()).sum() / size),
                    "switched": before is not None and image != before})
        before = image
    return out


# -- the gallery ---------------------------------------------------------------------------------
def cell_at(click: dict | None, n: int, columns: int) -> int | None:
    """Which of n cells of a grid drawn `columns` wide (rows of equal height, cells of equal width,
    as figures.gallery draws them) a click {x, y, width, height} on the drawing fell in; None if none."""
    if not click or "x" not in click or n < 1:
        return None
    rows = math.ceil(n / columns)
    col = int(click["x"] * columns // max(click.get("width") or 1, 1))
    row = int(click["y"] * rows // max(click.get("height") or 1, 1))
    if not (0 <= col < columns and 0 <= row < rows):
        return None
    cell = row * columns + col
    return cell if cell < n else None


# -- the study's settings -------------------------------------------------------------------------
def parse_ks(text: str, machine: str, train_hw: tuple[int, int]) -> list:
    """The study's localities from what a user typed: "5, 9, 13" or "7 mnist-resnet" -> [5, 9, 13] /
    [7, "mnist-resnet"]: odd window sizes the machine takes here, or the paper's schedule names.
    Duplicates dropped, order kept. ElsvizError says what is wrong with an entry."""
    out = []
    entries = [e for e in str(text).replace(",", " ").split() if e]
    if not entries:
        raise ElsvizError("Type at least one window size k (odd, e.g. 5, 9, 13) or a schedule name (e.g. mnist-resnet).")
    top = k_limit(machine, train_hw)
    for entry in entries:
        if entry in PRESETS:
            value = entry
        else:
            try:
                value = check_k(int(entry))
            except ValueError:
                raise ElsvizError(f"{entry!r} is neither a window size (an odd number) nor a schedule "
                                  f"({', '.join(PRESETS)}).") from None
            if top is not None and value > top:
                raise ElsvizError(f"k = {value} is too large for {MACHINE_NAMES[machine]} on {train_hw[0]}x{train_hw[1]} "
                                  f"images: at most {top}.")
        if value not in out:
            out.append(value)
    return out


def study_settings(machine: str, seeds: list[int], ks: list, steps: int) -> str:
    """A finger study's settings in words: 'bbELS on 16 seeds (0 to 15) at k = 9, 13, 17 and 25 (one window
    size for every step of a run), 10 steps each; IS on the same seeds as the reference.'"""
    seeds = [int(v) for v in seeds]
    run = f"{seeds[0]} to {seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 1 \
        else ", ".join(map(str, seeds))
    fixed = [k for k in ks if not isinstance(k, (str, tuple, list))]
    named = [k for k in ks if isinstance(k, str)]
    parts = []
    if fixed:
        parts.append(f"k = {_and(fixed)} (one window size for every step of a run)")
    if named:
        parts.append(f"the schedule{'s' if len(named) > 1 else ''} {_and(named)} (k changes with the step)")
    parts += [f"k = {min(k)}..{max(k)} per step" for k in ks if isinstance(k, (tuple, list))]
    return (f"{MACHINE_NAMES.get(machine, machine)} on {len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({run}) at "
            f"{' and '.join(parts)}, {steps} steps each; IS on the same seeds as the reference.")


def hand_record(traj: Trajectory, birth=None, *, k=None, train_name: str = "", sentence: str = "") -> dict:
    """One hand of the study for a JSON file: its run (seed, k, steps), the fingers counted, the extra
    finger(s) and why (fix_cover), the branch test, and the page's sentence."""
    fc = count_fingers(traj.final[0].cpu().mean(0))
    out = {"training_set": train_name, "machine": getattr(traj.denoiser, "machine", ""), "seed": traj.seed,
           "k": list(k) if isinstance(k, tuple) else k, "steps": int(traj.steps), "fingers": fc.count,
           "normal": HAND, "not_a_hand": fc.reason,
           "finger_tips": [[float(r), float(c)] for r, c in fc.tips], "sentence": sentence}
    if birth is not None:
        cover = fix_cover(traj, birth)
        out["branch_test"] = {"k": birth.k, "steps": birth.steps, "fingers": birth.counts,
                              "window": list(birth.window) if birth.window else None,
                              "agreement": birth.agreement, "redrawn": birth.changed,
                              "finger_kept_by_fix": cover}
        out["extra_fingers"] = extra_fingers(traj, birth)
    return out


@dataclass
class Studied:
    """A finger study of a local machine (elsviz.fingers.finger_study) beside its IS reference on the
    same seeds, as the page reads it: distributions, extra-finger rates, the gallery, the odd seeds."""

    study: object  # FingerStudy of the local machine
    ideal: object  # FingerStudy of IS (one row: IS has no window)

    @property
    def seeds(self) -> list[int]:
        return list(self.study.seeds)

    @property
    def ks(self) -> list:
        return list(self.study.ks)

    @property
    def ideal_rate(self) -> float:
        return self.ideal.extra_rate(self.ideal.ks[0])

    def distributions(self) -> dict:
        """{'k = 5': {fingers: seeds}, ..., 'IS': {...}} for figures.finger_histogram."""
        out = {f"k = {k}": dict(self.study.distribution(k)) for k in self.ks}
        out["IS"] = dict(self.ideal.distribution(self.ideal.ks[0]))
        return out

    def rates(self) -> list[tuple]:
        """[(k, extra-finger rate, seeds), ...] for figures.extra_rate_figure."""
        return [(k, self.study.extra_rate(k), len(self.seeds)) for k in self.ks]

    def worst(self):
        """The setting with the most odd hands, the smaller k on a tie (the gallery opens on it)."""
        return max(self.ks, key=lambda k: (self.study.odd_rate(k), -self.ks.index(k)))

    def sentence(self) -> str:
        rates = ", ".join(f"k = {k}: {self.study.extra_rate(k):.0%}" for k in self.ks)
        return (f"Hands with more than {self.study.target} fingers, of {len(self.seeds)} seeds: {rates}; "
                f"IS: {self.ideal_rate:.0%}.")

    @property
    def steps(self) -> int:
        return int(self.study.steps)

    def settings(self) -> str:
        """The study's own settings in words (study_settings)."""
        return study_settings(self.study.machine, self.seeds, self.ks, self.steps)

    def table(self) -> list[dict]:
        """One row per seed and setting, IS last: seed, machine, k (the window, or the schedule's name), steps,
        fingers (0: not a hand), and whether that hand has more than `target` fingers."""
        rows = []
        for machine, study in ((self.study.machine, self.study), ("is", self.ideal)):
            for k in study.ks:
                for seed, count in zip(study.seeds, study.counts[k]):
                    rows.append({"seed": int(seed), "machine": machine,
                                 "k": "" if machine == "is" else (list(k) if isinstance(k, tuple) else k),
                                 "steps": int(study.steps), "fingers": int(count),
                                 "extra": bool(count > study.target)})
        return rows

    def to_json(self) -> dict:
        """The study for a JSON file: its settings, the rate per setting and every seed's count."""
        return {"machine": self.study.machine, "seeds": self.seeds, "steps": self.steps,
                "ks": [list(k) if isinstance(k, tuple) else k for k in self.ks], "normal": self.study.target,
                "extra_rate": {str(k): self.study.extra_rate(k) for k in self.ks}, "extra_rate_is": self.ideal_rate,
                "odd_rate": {str(k): self.study.odd_rate(k) for k in self.ks}, "settings": self.settings(),
                "per_seed": self.table()}

    def entries(self, k, only_odd: bool = False) -> list[dict]:
        """The gallery of setting k: [{seed, count, image [C, H, W]}, ...], only the odd ones if asked."""
        finals, counts = self.study.finals[k], self.study.counts[k]
        out = [{"seed": s, "count": int(c), "image": finals[n]} for n, (s, c) in enumerate(zip(self.seeds, counts))]
        return [e for e in out if e["count"] != self.study.target] if only_odd else out

    def first_odd(self):
        """(k, seed) to open first: a hand with more than five fingers (else any odd one) at the worst
        setting; None when every hand is normal."""
        k = self.worst()
        extra = [e["seed"] for e in self.entries(k) if e["count"] > self.study.target]
        odd = extra or self.study.odd_seeds(k)
        return (k, odd[0]) if odd else None


def _and(items) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
