"""Extra-finger debugger: count the fingers of hand silhouettes, and find where, when and from which
training hands a run made a finger too many.

    from elsviz import count_fingers, finger_study, finger_birth, seam_map, commitment_map
    count_fingers(train.images[0]).count                  # 5
    study = finger_study(engine, seeds=range(24), ks=[5, 9, 13, 17])
    study.extra_rate(5), study.odd_seeds(5)               # how often, and which seeds
    birth = finger_birth(traj, k=17)                      # from which step a larger window still fixes it
    explain_extra_finger(traj, birth)                     # "... Finger 2 of 6 ... is the extra one ... born at step 6 ..."

The counter is a short scikit-image pipeline (docs/FINGERS.md shows each step):

    threshold -> largest piece (the hand; the rest are specks) -> fill pinholes -> opening with a
    disk wider than a finger (the palm) -> hand minus the palm grown by a pixel (the fingers) ->
    label -> keep the pieces that stick out of the palm by 2 pixels or more and do not run into
    the frame (the arm does) -> number them around the hand

Measured on the `hands` generator (seed 0, 1,000 hands per count, 32x32): 100.0% exact for 3, 4, 5
and 6 fingers, 99.7% for 7; 100.0% of the default training hands read 5. At 48x48 and 64x64
(200 per count) 99.5-100%; at 24x24, where a thumb is one or two pixels, 96.5-100%.
tests/test_fingers.py checks it on fresh hands (seed 11: 99.9% of 1,000, 3 to 7 fingers).
"""
from __future__ import annotations

import math
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ElsvizError
from ..machines import k_limit
from .provenance import seams
from ..sampling import Trajectory, branch, sample, start_noise
from ..schedule import locality_schedule

MIN_SIZE = 24  # smallest image side the counter takes (the hands generator's own limit)
MIN_REACH = 2.0  # pixels a finger must stick out of the palm; what opening leaves at corners is < 1.5
HOLE = 0.02  # holes under this share of the hand's area are filled (pinholes)
HAND = 5  # fingers of a normal hand, thumb included


# ----------------------------------------------------------------------------------------------
# Counting fingers
# ----------------------------------------------------------------------------------------------
@dataclass
class FingerCount:
    """The fingers found in one silhouette [H, W] (numpy arrays; row, col in pixels).

    count:   fingers found, thumb included; 0 with a `reason` when the image is not a hand
    regions: int32 [H, W]: 0 off the fingers, 1..count one label per finger, numbered around the
             hand counter-clockwise on screen, starting next to the wrist
    reason:  '' for a hand, else why count is 0, in words for the user
    hand:    bool [H, W] the silhouette counted (the largest piece of ink)
    palm:    bool [H, W] the palm (the hand opened with a disk of `radius`); empty if none
    tips:    float [count, 2] (row, col) of each finger's pixel farthest from the palm
    lengths: float [count] how far each finger sticks out of the palm, in pixels
    radius:  radius in pixels of the disk that told the palm from the fingers (0: not reached)
    specks:  pieces of ink dropped because they are not the hand
    """

    count: int
    regions: np.ndarray
    reason: str = ""
    hand: np.ndarray | None = field(default=None, repr=False)
    palm: np.ndarray | None = field(default=None, repr=False)
    tips: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    radius: int = 0
    specks: int = 0

    @property
    def is_hand(self) -> bool:
        return not self.reason

    def finger(self, label: int) -> np.ndarray:
        """bool [H, W]: the pixels of finger `label` (1..count)."""
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 1 <= label <= self.count:
            raise ElsvizError(f"There is no finger {label!r}: this image has {self.count} "
                              f"(labels 1..{self.count}).")
        return self.regions == label


def _as_image(image) -> np.ndarray:
    """A silhouette as float64 [H, W]; ElsvizError for anything that is not one grayscale image."""
    if isinstance(image, torch.Tensor):
        if image.is_complex() or image.dtype == torch.bool:
            raise ElsvizError(f"count_fingers needs a float image in [-1, 1], got a tensor of {image.dtype}.")
        arr = image.detach().to("cpu", torch.float64).numpy()
    elif isinstance(image, np.ndarray):
        numeric = np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)
        if image.dtype == bool or not numeric:
            raise ElsvizError(f"count_fingers needs a float image in [-1, 1], got an array of {image.dtype}.")
        arr = image.astype(np.float64)
    else:
        raise ElsvizError(f"count_fingers needs a torch tensor or numpy array [1, H, W] or [H, W], "
                          f"got {type(image).__name__}.")
    while arr.ndim > 2 and arr.shape[0] == 1:  # [1, H, W], or a run's output [1, 1, H, W]
        arr = arr[0]
    if arr.ndim != 2:
        raise ElsvizError(
            f"count_fingers needs one grayscale image [1, H, W] or [H, W], got shape {tuple(arr.shape)}; "
            "for a batch [B, 1, H, W] use count_fingers_batch, and convert colour images to grayscale first."
        )
    if min(arr.shape) < MIN_SIZE:
        raise ElsvizError(
            f"count_fingers needs images of at least {MIN_SIZE}x{MIN_SIZE} (fingers merge below that), "
            f"got {arr.shape[0]}x{arr.shape[1]}; resize the image up first."
        )
    if not np.isfinite(arr).all():
        raise ElsvizError("The image contains NaN or inf values; count_fingers needs finite values in [-1, 1].")
    lo, hi = arr.min(), arr.max()
    if lo < -1.5 or hi > 1.5:
        raise ElsvizError(f"count_fingers needs values in [-1, 1] (white hand on black), found [{lo:.3g}, {hi:.3g}]; "
                          "rescale 8-bit pixels with image / 127.5 - 1.")
    return arr


def _largest(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 4-connected piece of mask, and how many pieces there were."""
    from scipy import ndimage  # here, not at the top: the app's first page needs none of it (0.5 s)
    pieces, n = ndimage.label(mask)
    if n == 0:
        return mask, 0
    sizes = np.bincount(pieces.ravel())[1:]
    return pieces == 1 + int(np.argmax(sizes)), n


def _around(regions: list[np.ndarray], hand: np.ndarray, palm: np.ndarray) -> list[int]:
    """Order of the finger regions (pixels [P, 2] each) around the palm: counter-clockwise on screen from the wrist.

    The palm's centre is its deepest pixel; the wrist lies where the hand meets the frame (else
    where the palm reaches furthest from its centre, else straight down)."""
    from scipy import ndimage
    depth = ndimage.distance_transform_edt(palm)
    centre = np.array(np.unravel_index(np.argmax(depth), palm.shape), dtype=np.float64)
    frame = np.zeros_like(hand)
    frame[0], frame[-1], frame[:, 0], frame[:, -1] = True, True, True, True
    arm = np.argwhere(hand & frame)
    wrist = arm.mean(0) - centre if len(arm) else np.argwhere(palm).mean(0) - centre
    if np.hypot(*wrist) < 1e-6:
        wrist = np.array([1.0, 0.0])

    def angle(v):  # on screen: rows grow downwards
        return math.atan2(-v[0], v[1])

    start = angle(wrist)
    turn = [(angle(r.mean(0) - centre) - start) % (2 * math.pi) for r in regions]
    return sorted(range(len(regions)), key=lambda i: turn[i])


def count_fingers(image, *, threshold: float = 0.0) -> FingerCount:
    """Count the fingers (thumb included) of a white-on-black hand silhouette.

    image: tensor or array [1, H, W] or [H, W] (or a run's output [1, 1, H, W]) with values in
    [-1, 1], H, W >= 24. threshold: ink is brighter than this (0 = mid grey, so
    anti-aliased edges count when at least half covered).
    Not a hand (blank, noise, a blob): count 0 and `reason` says why, never an exception; a wrong
    type or shape raises ElsvizError.
    """
    from scipy import ndimage
    from skimage import measure, morphology
    img = _as_image(image)
    h, w = img.shape
    none = np.zeros((h, w), dtype=np.int32)
    # 1. threshold
    ink = img > threshold
    if ink.mean() < 0.01:
        return FingerCount(0, none, "blank: less than 1% of the picture is brighter than mid grey")
    if ink.mean() > 0.9:
        return FingerCount(0, none, "no background: more than 90% of the picture is ink")
    # 2. the hand is the largest piece of ink; smaller pieces are specks
    hand, pieces = _largest(ink)
    if hand.sum() < 0.5 * ink.sum():
        return FingerCount(0, none, f"scattered: the ink lies in {pieces} pieces and none holds half of it "
                                    "(noise, not a silhouette)", hand=hand, specks=pieces - 1)
    if np.concatenate([hand[0], hand[-1], hand[:, 0], hand[:, -1]]).mean() > 0.5:
        return FingerCount(0, none, "inverted?: the ink runs round most of the picture's border; a silhouette "
                                    "is white on black (pass -image for black on white)", hand=hand, specks=pieces - 1)
    # 3. fill pinholes (a hole the size of a speck would stop the disk below from fitting in the palm)
    hand = morphology.remove_small_holes(hand, max_size=max(1, int(HOLE * hand.sum())), connectivity=2)
    # 4. palm: open the hand with a disk a little wider than half the hand's widest part; that
    #    disk fits in the palm but in no finger. Its largest piece is the palm (others: wrist, fist)
    depth = ndimage.distance_transform_edt(np.pad(hand, 1))  # [H+2, W+2]; the frame counts as background
    radius = max(1, math.ceil(0.45 * depth.max()))
    palm, _ = _largest(morphology.opening(hand, morphology.disk(radius)))
    if not palm.any():
        return FingerCount(0, none, "no palm: no part of the silhouette is wider than a finger", hand=hand,
                           radius=radius, specks=pieces - 1)
    # 5. fingers = hand minus the palm grown by a pixel (which cuts the thin bridges where the
    #    bases of neighbouring fingers touch), in 4-connected pieces
    candidates, _ = ndimage.label(hand & ~morphology.dilation(palm, morphology.disk(1)))
    # 6. keep the pieces that stick out of the palm (corner crumbs of the opening do not) and
    #    stay inside the frame (the arm runs out of it)
    reach = ndimage.distance_transform_edt(~palm)  # [H, W] distance to the palm
    found = []  # (pixels [P, 2], tip (row, col), reach)
    for r in measure.regionprops(candidates):
        rows, cols = r.coords[:, 0], r.coords[:, 1]
        out = reach[rows, cols]
        at_frame = rows.min() == 0 or cols.min() == 0 or rows.max() == h - 1 or cols.max() == w - 1
        if out.max() >= MIN_REACH and not at_frame:
            found.append((r.coords, r.coords[np.argmax(out)], out.max()))
    if not found:
        return FingerCount(0, none, "no fingers: nothing sticks out of the palm (a blob or a fist)", hand, palm,
                           radius=radius, specks=pieces - 1)
    # 7. number them around the hand
    order = _around([f[0] for f in found], hand, palm)
    regions = none.copy()
    for label, i in enumerate(order, start=1):
        regions[found[i][0][:, 0], found[i][0][:, 1]] = label
    tips = np.array([found[i][1] for i in order], dtype=np.float64)
    lengths = np.array([found[i][2] for i in order], dtype=np.float64)
    return FingerCount(len(found), regions, "", hand, palm, tips, lengths, radius, pieces - 1)


def count_fingers_batch(images, *, threshold: float = 0.0) -> list[FingerCount]:
    """count_fingers for each image of a batch [B, 1, H, W] (or [B, H, W]): a tensor or array."""
    if not isinstance(images, (torch.Tensor, np.ndarray)):
        raise ElsvizError(f"count_fingers_batch needs a tensor or array [B, 1, H, W], got {type(images).__name__}.")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[1] != 1):
        raise ElsvizError(f"count_fingers_batch needs grayscale images [B, 1, H, W] or [B, H, W], "
                          f"got shape {tuple(images.shape)}; for one image use count_fingers.")
    return [count_fingers(im, threshold=threshold) for im in images]


# ----------------------------------------------------------------------------------------------
# Maps of a run: seams of the mosaic, and when each pixel decided
# ----------------------------------------------------------------------------------------------
NEVER = -1  # commitment_map's value for a pixel that never decided


def _provenance(frame, what: str):
    if getattr(frame, "source_index", None) is None:
        raise ElsvizError(f"{what} needs provenance (source_index, source_pos, source_count): this run's denoiser "
                          "does not name training patches; run an elsviz Engine.")
    return frame.source_index, frame.source_pos, frame.source_count


def _batch(b, n: int, all_ok: bool = True) -> int | None:
    if b is None and all_ok:
        return None
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 0 <= b < n:
        every = " (or None for all)" if all_ok else ""
        raise ElsvizError(f"batch must be an image of the run, 0 .. {n - 1}{every}, got {b!r}.")
    return int(b)


def seam_map(frame, batch: int | None = 0) -> torch.Tensor:
    """bool [H, W] (batch=None: [B, H, W]): pixels that touch a seam of the patch mosaic.

    A seam runs between two neighbouring pixels (left-right or up-down) copied from different
    training images, or from the same image at inconsistent offsets (source position minus pixel
    position differs: two copies of the same hand, shifted). Both pixels of such a pair are marked.
    Shared pixels (source_count > 1: their window matches several identical training patches, as
    flat background does) have no single source, so they make no seams: otherwise the background
    would be all seams. frame: a Frame (or Posterior) of an Engine's run; elsviz.analysis.provenance.seams gives
    the cuts between pixels themselves.
    """
    idx, pos, cnt = _provenance(frame, "seam_map")
    b = _batch(batch, idx.shape[0])
    out = torch.zeros(idx.shape, dtype=torch.bool, device=idx.device)  # [B, H, W]
    for n in range(idx.shape[0]) if b is None else [b]:
        vertical, horizontal = seams(idx[n], pos[n], cnt[n])  # [H, W-1], [H-1, W]
        out[n, :, :-1] |= vertical
        out[n, :, 1:] |= vertical
        out[n, :-1] |= horizontal
        out[n, 1:] |= horizontal
    return out if b is None else out[b]


def commitment_map(trajectory: Trajectory, threshold: float = 0.5, batch: int | None = 0, *,
                   ties: bool = True) -> torch.Tensor:
    """int64 [H, W] (batch=None: [B, H, W]): the step at which each pixel's key entropy first fell
    below `threshold` (nats), i.e. when it decided which training patch it copies.

    Steps count down from steps-1 (most noise) to 1, so a large value means an early decision.
    NEVER (-1): the entropy stayed above the threshold to the end. ties=True measures the entropy
    over distinct windows: identical keys (source_count of them, e.g. flat background) share one
    decision, so log(source_count) is taken off (exact when the weight sits on the tied keys).
    """
    if not isinstance(trajectory, Trajectory):
        raise ElsvizError(f"commitment_map needs a Trajectory (from sample or branch), "
                          f"got {type(trajectory).__name__}.")
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ElsvizError(f"threshold must be a number of nats > 0, e.g. 0.5; got {threshold!r}.") from None
    if not threshold > 0:
        raise ElsvizError(f"threshold must be a number of nats > 0, e.g. 0.5; got {threshold}.")
    frames = trajectory.frames
    if not frames or frames[0].entropy is None:
        raise ElsvizError("commitment_map needs the entropy of every step: this run's denoiser does not report it; "
                          "run an elsviz Engine.")
    b = _batch(batch, frames[0].entropy.shape[0])
    out = torch.full(frames[0].entropy.shape, NEVER, dtype=torch.int64, device=frames[0].entropy.device)  # [B, H, W]
    for f in frames:  # most noise first
        ent = f.entropy
        if ties and f.source_count is not None:
            ent = ent - torch.log(f.source_count.to(ent.dtype))
        out = torch.where((out == NEVER) & (ent < threshold), f.i, out)
    return out if b is None else out[b]


# ----------------------------------------------------------------------------------------------
# Where a finger was copied from
# ----------------------------------------------------------------------------------------------
def _mask(mask, shape) -> np.ndarray:
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.shape != tuple(shape) or m.dtype != bool:
        raise ElsvizError(f"mask must be a bool array [H, W] = {list(shape)}, got {m.dtype} of shape {m.shape}; "
                          "e.g. FingerCount.finger(label).")
    return m


def region_sources(frame, mask, top: int | None = 5, batch: int = 0) -> list[dict]:
    """The training images a region of a frame (a finger, say) was copied from, most pixels first.

    mask: bool [H, W]. Each entry: image (training index), pixels (how many of the region's pixels
    copy it), share (of the region's attributed pixels), offset (row, col: the most common source
    position minus pixel position, where the piece sits in that image relative to the output) and
    centre (row, col: mean source position in that image). Shared pixels (source_count > 1, no
    single source) are left out. top: at most that many images (None: all).
    """
    idx, pos, cnt = _provenance(frame, "region_sources")
    b = _batch(batch, idx.shape[0], all_ok=False)
    m = _mask(mask, idx.shape[1:]) & (cnt[b] == 1).cpu().numpy()  # attributed pixels of the region
    rows, cols = np.nonzero(m)
    src = idx[b].cpu().numpy()[rows, cols]  # [P]
    spos = pos[b].cpu().numpy()[rows, cols]  # [P, 2]
    out = []
    for image in np.unique(src):
        sel = src == image
        offsets = Counter(zip((spos[sel, 0] - rows[sel]).tolist(), (spos[sel, 1] - cols[sel]).tolist()))
        out.append({"image": int(image), "pixels": int(sel.sum()), "share": float(sel.mean()),
                    "offset": offsets.most_common(1)[0][0],
                    "centre": (float(spos[sel, 0].mean()), float(spos[sel, 1].mean()))})
    out.sort(key=lambda d: (-d["pixels"], d["image"]))
    return out if top is None else out[: int(top)]


# ----------------------------------------------------------------------------------------------
# When a finger is born: the branch test
# ----------------------------------------------------------------------------------------------
@dataclass
class FingerBirth:
    """The branch test of one run: finish it from step s with another locality and count fingers.

    base:      fingers of the run's own output
    target:    the count that counts as fixed (5 for a hand)
    k:         the locality of the branches (an int, a schedule or a preset name; None: the
               denoiser's own, e.g. IS)
    steps:     the steps s branched from, most noise first
    counts:    fingers of each branch's output, in the order of `steps`
    finals:    each branch's output [1, C, H, W]
    window:    (first, last), first >= last: the original run's steps that made the odd count.
               Branching at `first` or earlier gives `target` fingers, branching after `last`
               does not. None: the count is already right, or no such step fits the counts
               better than "the branches never fix it"
    agreement: share of the branches that fit that story (1.0: all of them; below, the larger
               window itself sometimes makes odd hands, or the count flickers)
    changed:   per branch, the share of the silhouette it redraws (1 - intersection over union
               of the thresholded outputs with the run's own)
    searched:  True when the steps came from a binary search (bisect=True), not from every step
    """

    base: int
    target: int
    k: object
    steps: list[int]
    counts: list[int]
    finals: list[torch.Tensor] = field(repr=False)
    window: tuple[int, int] | None
    agreement: float = 1.0
    changed: list[float] = field(default_factory=list)
    searched: bool = False

    @property
    def points(self) -> list[tuple[int, int]]:
        """[(s, fingers), ...] for a plot of the count against the step."""
        return list(zip(self.steps, self.counts))

    @property
    def fixed_from(self) -> int | None:
        """The latest step from which a branch gives `target` fingers: window[0]."""
        return None if self.window is None else self.window[0]

    def final(self, s: int) -> torch.Tensor:
        """The output [1, C, H, W] of the branch from step s."""
        return self.finals[self.steps.index(s)]


def _one(traj: Trajectory, b: int) -> Trajectory:
    """Image b of a batched run as a run of its own."""
    def cut(v):
        return v[b:b + 1] if isinstance(v, torch.Tensor) else v

    frames = [type(f)(**{name: cut(v) for name, v in vars(f).items()}) for f in traj.frames]
    return Trajectory(frames, traj.final[b:b + 1], traj.x_init[b:b + 1], traj.steps, traj.ks, traj.label,
                      traj.seed, traj.denoiser)


def _window(points: list[tuple[int, int]], target: int) -> tuple[tuple[int, int] | None, float]:
    """The birth window and the share of branches that agree with it (see FingerBirth).

    The story "branching at step b or earlier fixes it, later does not" is fitted to the counts:
    b is the fixing step that the most branches agree with; "never fixed" competes too, and wins
    ties with no window only when no branch fixes it. Counts that follow one step exactly give
    b = the latest fixing step."""
    fixes = {s: c == target for s, c in points}
    never = sum(fixes.values())  # branches that disagree with "never fixed"
    best, errors = None, never
    for b in sorted((s for s in fixes if fixes[s]), reverse=True):
        wrong = sum((s >= b) != fixed for s, fixed in fixes.items())
        if wrong <= errors:  # ties: the later step, and a window over none
            best, errors = b, wrong
    share = 1.0 - errors / max(len(points), 1)
    if best is None:
        return None, share
    stuck = [s for s in fixes if s < best]
    return (best, max(stuck) + 1 if stuck else 1), share


def finger_birth(trajectory: Trajectory, k=None, *, denoiser=None, at_steps=None, bisect: bool = False,
                 batch: int = 0, target: int = HAND, progress: Callable | None = None) -> FingerBirth:
    """Finish the run from step s with a larger window k (or with another denoiser, e.g. an IS
    Engine) for each s, count the fingers, and find the steps in which the odd count was made.

    Branching early (large s, much noise) redoes most of the run and gives a normal hand; branching
    late keeps what the run has already decided. The latest s that still gives `target` fingers
    and the next step tried after it, which no longer does, bound the window: the extra finger was
    decided by the original run's steps window[0] .. window[1]. The larger window sometimes makes
    odd hands of its own, so the window is the step that most branches agree with (FingerBirth.
    agreement says how many). at_steps: the steps to try (default all, steps-1 .. 1); bisect=True:
    a binary search over them instead (about log2(steps) + 2 branches; it assumes branching earlier
    never breaks what branching later fixed). A run of a batch: image `batch`. progress(done,
    total, message) after each branch.
    """
    if not isinstance(trajectory, Trajectory):
        raise ElsvizError(f"finger_birth needs a Trajectory (from sample), got {type(trajectory).__name__}.")
    if k is None and denoiser is None:
        raise ElsvizError("finger_birth needs a larger window k (e.g. k=17) or another denoiser (e.g. an IS Engine) "
                          "to branch with.")
    b = _batch(batch, trajectory.final.shape[0], all_ok=False)
    one = _one(trajectory, b)
    valid = range(1, trajectory.steps)
    steps = sorted(valid if at_steps is None else {int(s) for s in at_steps}, reverse=True)
    if not steps or any(s not in valid for s in steps):
        raise ElsvizError(f"at_steps must be steps of the run, {trajectory.steps - 1} .. 1; got {at_steps!r}.")
    original = one.final[0].cpu().mean(0)  # [H, W]
    base = count_fingers(original).count
    tried: dict[int, tuple[int, torch.Tensor]] = {}

    def run(s: int) -> bool:
        out = branch(one, s, k=k, denoiser=denoiser).final.cpu()  # [1, C, H, W]
        tried[s] = (count_fingers(out[0].mean(0)).count, out)
        if progress is not None:
            progress(len(tried), total, f"finished from step {s}")
        return tried[s][0] == target

    if bisect:
        total = max(1, math.ceil(math.log2(len(steps))) + 2)
        if run(steps[0]) and len(steps) > 1 and not run(steps[-1]):
            lo, hi = len(steps) - 1, 0  # steps[hi] fixes it, steps[lo] does not
            while lo - hi > 1:
                mid = (lo + hi) // 2
                if run(steps[mid]):
                    hi = mid
                else:
                    lo = mid
    else:
        total = len(steps)
        for s in steps:
            run(s)
    done = sorted(tried, reverse=True)
    points = [(s, tried[s][0]) for s in done]
    window, agreement = (None, 1.0) if base == target else _window(points, target)
    finals = [tried[s][1] for s in done]
    changed = [_redrawn(original, f[0].mean(0)) for f in finals]
    return FingerBirth(base, target, k, done, [c for _, c in points], finals, window, agreement, changed, bisect)


def _redrawn(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - intersection over union of the silhouettes (> 0) of two images [H, W]."""
    sa, sb = a > 0, b > 0
    union = int((sa | sb).sum())
    return 0.0 if union == 0 else 1.0 - int((sa & sb).sum()) / union


# ----------------------------------------------------------------------------------------------
# How often: the finger study
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyPlan:
    """A study's size: n_train training hands (load_dataset("hands", n=n_train)), seeds 0 ..
    n_seeds-1, the window sizes ks, and steps of the reverse process."""

    n_train: int
    n_seeds: int
    ks: tuple
    steps: int

    @property
    def seeds(self) -> list[int]:
        return list(range(self.n_seeds))


# bbELS on 200 training hands, 16 seeds as one batch, 10 steps, four windows: at k = 9 many outputs
# are no hand at all, at 13 to 25 a quarter to a half have extra fingers; IS never (docs/FINGERS.md,
# with the timing).
DEFAULT_STUDY = StudyPlan(n_train=200, n_seeds=16, ks=(9, 13, 17, 25), steps=10)


@dataclass
class FingerStudy:
    """Finger counts of the outputs of many seeds, per locality.

    seeds:   the seeds, in order (row n of every batch is seeds[n])
    ks:      the localities as given (lists turned into tuples); each keys the dicts below
    counts:  k -> [fingers of seed n's output] (0: not a hand)
    finals:  k -> outputs [B, C, H, W] (on the CPU)
    fingers: k -> [FingerCount of seed n's output]
    seconds: k -> seconds that setting took (about 0 when it came from the cache)
    target:  the normal count (5)
    """

    seeds: list[int]
    ks: list
    counts: dict
    finals: dict = field(repr=False)
    fingers: dict = field(repr=False)
    seconds: dict
    steps: int
    machine: str
    target: int = HAND

    def distribution(self, k) -> Counter:
        """Counter {fingers: seeds} of setting k."""
        return Counter(self.counts[_key(k)])

    def odd_rate(self, k) -> float:
        """Share of the seeds whose output does not have exactly `target` fingers (no hand included)."""
        c = self.counts[_key(k)]
        return sum(n != self.target for n in c) / len(c)

    def extra_rate(self, k) -> float:
        """Share of the seeds whose output has more than `target` fingers."""
        c = self.counts[_key(k)]
        return sum(n > self.target for n in c) / len(c)

    def odd_seeds(self, k) -> list[int]:
        """The seeds of setting k whose hand does not have `target` fingers."""
        return [s for s, n in zip(self.seeds, self.counts[_key(k)]) if n != self.target]

    def summary(self) -> str:
        """One line per setting: 'k=5: 16 seeds, odd 81%, extra 44%, counts {5: 3, 6: 5, ...}'."""
        return "\n".join(f"k={k}: {len(self.seeds)} seeds, odd {self.odd_rate(k):.0%}, extra {self.extra_rate(k):.0%}, "
                         f"counts {dict(sorted(self.distribution(k).items()))}" for k in self.ks)


def _key(k):
    """A locality as a dict key: lists become tuples."""
    if isinstance(k, (list, tuple)):
        return tuple(int(v) for v in k)
    if isinstance(k, torch.Tensor) or isinstance(k, np.ndarray):
        return tuple(int(v) for v in k.tolist())
    return k


# engine -> OrderedDict{(machine, set name, size, shape, seeds, k, steps, label): (finals, FingerCounts)}
_STUDIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STUDY_ROWS = 32  # settings kept per engine


def clear_study_cache() -> None:
    """Forget every cached study row."""
    _STUDIES.clear()


def study_noise(engine, seeds: Iterable[int]) -> torch.Tensor:
    """[B, C, H, W]: row n is the noise sample(engine, seed=seeds[n]) starts from."""
    shape = (1, *engine.train.shape)
    return torch.cat([start_noise(engine, int(s), shape) for s in seeds])


def finger_study(engine, seeds: Iterable[int], ks=None, steps: int = 20, label: int | None = None, *,
                 batch: int | None = None, target: int = HAND, progress: Callable | None = None,
                 cache: bool = True) -> FingerStudy:
    """Count the fingers of the outputs of many seeds, for each locality in ks.

    For each k the seeds run as one batch (or batches of `batch` seeds) through sample(engine,
    x=study_noise(engine, seeds), ...): row n starts from exactly the noise of
    sample(engine, seed=seeds[n]), so a single run reproduces any entry. ks: odd ints, schedules
    (lists of `steps` ints) or preset names; default DEFAULT_STUDY.ks. The IS reference: pass an IS
    Engine (it ignores k, so one k, any k, makes one row).
    Cached per engine (weakly: the rows go with the engine) and per (machine, training set name,
    size and shape, seeds, k, steps, label), at most 32 rows per engine; cache=False recomputes.
    progress(done, total, message) after every denoising step; total = settings x batches x (steps - 1).
    """
    seeds = _seeds(seeds)
    ks = list(DEFAULT_STUDY.ks if ks is None else ([ks] if isinstance(ks, (int, str)) else ks))
    if not ks:
        raise ElsvizError("ks is empty: give at least one window size k (e.g. [5, 9, 13]) or a preset name.")
    if not hasattr(engine, "denoise") or getattr(engine, "train", None) is None:
        raise ElsvizError(f"finger_study needs an elsviz Engine (a denoiser with a training set), "
                          f"got {type(engine).__name__}.")
    c, h, w = engine.train.shape
    top = k_limit(getattr(engine, "machine", "bbels"), (h, w))
    for k in ks:  # a window the machine refuses fails here, before anything runs
        schedule = locality_schedule(list(k) if isinstance(k, tuple) else k, steps)
        if top is not None and max(schedule[1:]) > top:
            raise ElsvizError(f"k = {k} is too large for {engine.machine} on {h}x{w} images: at most {top}.")
    size = len(seeds) if batch is None else int(batch)
    if size < 1:
        raise ElsvizError(f"batch must be a positive number of seeds, got {batch!r}.")
    chunks = [seeds[i:i + size] for i in range(0, len(seeds), size)]
    total, done = len(ks) * len(chunks) * (steps - 1), 0
    rows = _study_rows(engine) if cache else None
    out = FingerStudy(seeds, [_key(k) for k in ks], {}, {}, {}, {}, steps, getattr(engine, "machine", "?"), target)
    for k in out.ks:
        key = (out.machine, engine.train.name, len(engine.train), (c, h, w), tuple(seeds), k, steps, label)
        start = time.perf_counter()
        if rows is not None and key in rows:
            rows.move_to_end(key)
            row = rows[key]
            done += len(chunks) * (steps - 1)
            if progress is not None:
                progress(done, total, f"k={k}: from the cache")
        else:
            finals = []
            for chunk in chunks:
                def step(frame, k=k):
                    nonlocal done
                    done += 1
                    if progress is not None:
                        progress(done, total, f"k={k}: step {frame.i}")

                traj = sample(engine, x=study_noise(engine, chunk), steps=steps,
                              k=list(k) if isinstance(k, tuple) else k, label=label, callback=step)
                finals.append(traj.final.cpu())
            final = torch.cat(finals)  # [B, C, H, W]
            row = (final, count_fingers_batch(final.mean(1, keepdim=True)))
            if rows is not None:
                rows[key] = row
                while len(rows) > _STUDY_ROWS:
                    rows.popitem(last=False)
        out.finals[k], out.fingers[k] = row[0], list(row[1])
        out.counts[k] = [f.count for f in row[1]]
        out.seconds[k] = time.perf_counter() - start
    return out


def _study_rows(engine) -> OrderedDict | None:
    try:
        return _STUDIES.setdefault(engine, OrderedDict())
    except TypeError:  # an object that cannot be weakly referenced: no cache
        return None


def _seeds(seeds) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        raise ElsvizError(f"seeds must be a list of seeds (e.g. range({seeds})), got the single number {seeds}.")
    try:
        seeds = list(seeds)
    except TypeError:
        raise ElsvizError(f"seeds must be a list of integers, e.g. range(16); got {seeds!r}.") from None
    if not seeds:
        raise ElsvizError("A study needs at least one seed: give e.g. seeds=range(16).")
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in seeds):
        raise ElsvizError(f"seeds must be integers, e.g. range(16); got {seeds!r}.")
    return [int(s) for s in seeds]


# ----------------------------------------------------------------------------------------------
# In plain words
# ----------------------------------------------------------------------------------------------
def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _hands(images: list[int]) -> str:
    names = [f"#{i}" for i in images]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _listed(labels: list[int]) -> str:
    return _hands([str(v) for v in labels]).replace("#", "")


def _few(n: int) -> str:
    return {1: "one", 2: "two", 3: "three"}.get(n, str(n))


def _pct(values) -> str:
    """'0%', '36% and 8%', or '0% each' when several are the same (as printed)."""
    parts = [f"{v:.0%}" for v in values]
    if len(parts) > 1 and len(set(parts)) == 1:
        return f"{parts[0]} each"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# -- when, in a run whose steps count down ---------------------------------------------------------
PHASES = {"early": "early in the run, in its first third", "midway": "midway through the run, in its middle third",
          "late": "late in the run, in its last third"}


def run_phase(step: int, steps: int) -> str:
    """'early', 'midway' or 'late': the third of a run of `steps` steps that step `step` falls in.

    Steps count down: step steps-1 runs first (most noise), step 1 last. Step s is the
    (steps - s)-th of the steps - 1 denoising steps; its middle, (steps - s - 0.5) / (steps - 1)
    of the way through the run, decides the third."""
    n = steps - 1
    if not 1 <= step <= n:
        raise ElsvizError(f"step must be a step of the run, {n} .. 1; got {step!r}.")
    middle = (steps - step - 0.5) / n
    return "early" if middle < 1 / 3 else "late" if middle > 2 / 3 else "midway"


def when_in_run(window: tuple[int, int], steps: int) -> str:
    """The steps first .. last (first >= last) of a run of `steps` steps in words, counting forwards:
    'at step 3, the 7th of the run's 9 steps, late in the run, in its last third'."""
    first, last = window
    order = (steps - first, steps - last)  # 1 = the first step the run takes
    a, b = run_phase(first, steps), run_phase(last, steps)
    if a == b:
        phase = PHASES[a]
    else:
        phase = f"from {a} to {b} in the run"
    if first == last:
        return f"at step {first}, the {_ordinal(order[0])} of the run's {steps - 1} steps, {phase}"
    return (f"somewhere in steps {first} to {last}, the {_ordinal(order[0])} to {_ordinal(order[1])} of the run's "
            f"{steps - 1} steps, {phase}")


def countdown(steps: int) -> str:
    """How the steps of a run are numbered, in words."""
    return f"steps count down from {steps - 1}, the noisiest, to 1, the last"


# -- which finger is the extra one ------------------------------------------------------------------
KEPT = 0.5  # a finger the fixing branch keeps: at least half of its pixels are still hand there.
# Measured (bbELS k = 13 on 200 hands, the six-finger outputs of seeds 0, 1, 5 and 11, branched with
# k = 17 and 31): where a fix removes one finger, that finger keeps 0% and every other 73-100%; a fix
# that redraws the hand leaves its fingers anywhere from 0% to 100%.


def fix_cover(trajectory: Trajectory, birth: FingerBirth | None, batch: int = 0) -> list[float] | None:
    """For each finger of the run's output (label 1 first): the share of its pixels that are still
    hand in the branch that fixes the count (the branch from birth.window[0]). None without a
    window (no branch test, or no branch fixes it)."""
    b = _batch(batch, trajectory.final.shape[0], all_ok=False)
    if birth is None or birth.window is None:
        return None
    fc = count_fingers(trajectory.final[b].cpu().mean(0))
    fixed = count_fingers(birth.final(birth.window[0])[0].mean(0))
    cover = fixed.hand if fixed.hand is not None else np.zeros(fc.regions.shape, dtype=bool)
    return [float(cover[fc.regions == label].mean()) for label in range(1, fc.count + 1)]


def extra_fingers(trajectory: Trajectory, birth: FingerBirth | None = None, batch: int = 0) -> list[int]:
    """The extra fingers of the run's output: those the branch test's fixing branch drops.

    One definition, because a six-finger hand has no finger marked extra (the counter finds six
    alike): the extra finger is the one that finishing the run with a larger window, from the
    latest step that still gives `target` fingers (birth.window[0]), drops (less than KEPT of its
    pixels still hand) while it keeps every other finger. [] when that does not single fingers out:
    no branch test or no fixing branch; a window at step 1 (the larger window overwrites the hand at
    the end); a fix that drops more fingers than the hand has too many (it redraws that part of the
    hand) or fewer (it changes the fingers' shapes instead)."""
    b = _batch(batch, trajectory.final.shape[0], all_ok=False)
    cover = fix_cover(trajectory, birth, b)
    if cover is None or birth.window[0] == 1:
        return []
    surplus = len(cover) - birth.target
    dropped = [label for label, c in enumerate(cover, start=1) if c < KEPT]
    return dropped if surplus > 0 and len(dropped) == surplus else []


def extra_finger(trajectory: Trajectory, birth: FingerBirth | None = None, batch: int = 0) -> int | None:
    """The label of the run's extra finger (see extra_fingers: the one finger the branch test's fixing
    branch drops while keeping the others), or None: no branch test, not exactly one finger too
    many, or no single finger that the fix drops."""
    found = extra_fingers(trajectory, birth, batch)
    return found[0] if len(found) == 1 else None


def _sources(trajectory: Trajectory, mask: np.ndarray, window, b: int, top: int) -> list[int]:
    """The training images most of a region's attributed pixels copy, summed over the window's steps
    (without one: the last step)."""
    frames = [f for f in trajectory.frames if window and window[1] <= f.i <= window[0]] or trajectory.frames[-1:]
    pixels: Counter = Counter()
    for f in frames if frames[0].source_index is not None else []:
        for src in region_sources(f, mask, top=None, batch=b):
            pixels[src["image"]] += src["pixels"]
    return [i for i, _ in pixels.most_common(top)]


def _copied(trajectory: Trajectory, mask: np.ndarray, window, b: int, train, top: int, pixels: str) -> str:
    """' In those steps the heaviest patches of its pixels came from training hands #71 and #55, which have 5
    fingers each.' (The heaviest, not a copy: a pixel's heaviest patch often holds a few percent of its
    weight, elsviz.analysis.claims.)"""
    if trajectory.frames[-1].source_index is None:
        return " This run's denoiser names no training patches."
    when = "In those steps" if window else "At the last step"
    images = _sources(trajectory, mask, window, b, top)
    if not images:
        return f" {when} {pixels} were shared only (windows that many training hands have alike)."
    text = f" {when} the heaviest patches of {pixels} came from training hand{'s' if len(images) > 1 else ''} {_hands(images)}"
    if train is not None and len(train) > max(images):
        counts = [count_fingers(train.images[i].mean(0)).count for i in images]
        if len(counts) == 1:
            text += f", which has {counts[0]} fingers" if counts[0] else ", which is not a hand to the counter"
        elif len(set(counts)) == 1 and counts[0]:
            text += f", which have {counts[0]} fingers each"
        elif all(counts):
            text += f", which have {_listed(counts)} fingers"
    return text + "."


def explain_extra_finger(trajectory: Trajectory, birth: FingerBirth | None = None, *, finger: int | None = None,
                         batch: int = 0, train=None, top: int = 2) -> str:
    """What made the run's odd hand, in plain words and with the numbers behind them, e.g.

    "This hand has 6 fingers, one more than 5. Finger 2 of 6 (the 2nd around the hand from the
    wrist) is the extra one: finishing the run with k = 17 from step 6 gives 5 fingers, keeping the
    other 5 (at least 73% of each is still hand there) and dropping finger 2 (0% left). It is born
    at step 6, the 4th of the run's 9 steps, midway through the run, in its middle third (steps
    count down from 9, the noisiest, to 1, the last): finishing from step 6 or any earlier step
    gives 5 fingers, from step 5 or any later one it does not. In those steps its pixels were copied
    from training hands #71 and #55, which have 5 fingers each. That branch redraws 12% of the
    silhouette."

    birth: the run's branch test (finger_birth); without one no finger is named extra (see
    extra_fingers for the definition). finger: explain this finger's sources instead. train: the
    training set, to say how many fingers the source hands have. The sources are the training images
    most of the fingers' pixels copy, summed over the steps of the birth window (without one: at the
    last step).
    """
    b = _batch(batch, trajectory.final.shape[0], all_ok=False)
    fc = count_fingers(trajectory.final[b].cpu().mean(0))
    target = birth.target if birth is not None else HAND
    if not fc.is_hand:
        return f"No hand to explain: {fc.reason}."
    if fc.count == target and finger is None:
        return f"This hand has {target} fingers: nothing extra to explain."
    steps = trajectory.steps
    diff = fc.count - target
    head = "" if diff == 0 else \
        f"This hand has {fc.count} fingers, {_few(abs(diff))} {'more' if diff > 0 else 'fewer'} than {target}."
    window = birth.window if birth is not None else None
    k = None if birth is None else ("the other denoiser" if birth.k is None else f"k = {birth.k}")

    if finger is not None:  # one finger's sources, whatever the count
        mask = fc.finger(finger)
        span = window if window and window[0] > 1 else None
        made = when_in_run(span, steps) if span else "by the run"
        text = f"Finger {finger} of {fc.count} (the {_ordinal(finger)} around the hand from the wrist) is made {made}."
        return " ".join(p for p in (head, text) if p) + _copied(trajectory, mask, span, b, train, top, "its pixels")

    if birth is None:
        if diff < 0:
            return head + " The branch test (finishing the run with a larger window) tells when the finger was lost."
        return (head + f" No finger is extra by itself: the counter finds {fc.count} fingers alike. The branch test "
                f"decides which one is: the extra finger is the one that finishing the run with a larger window, from the "
                f"latest step that still gives {target} fingers, drops while it keeps the others.")
    if window is None:
        fixed = sum(c == target for c in birth.counts)
        if len(birth.steps) == 1:  # one branch: a binary search stops when its first one does not fix it
            first = birth.steps[0]
            earliest = " (the earliest branch: it redoes nearly the whole run)" if first == steps - 1 else ""
            how = (f" Finishing the run with {k} from step {first}{earliest} gives {birth.counts[0]} fingers, not "
                   f"{target}" + (", and the binary search stops there; try branching from every step (the larger "
                                  "window sometimes errs on one step), or a larger k." if birth.searched else
                                  ": that window does not undo it; try a larger k."))
        else:
            some, undo = (f"on only {fixed}", "does not undo it reliably") if fixed else ("on none", "does not undo it")
            how = (f" Finishing the run with {k} gives {target} fingers {some} of the {len(birth.steps)} branches: "
                   f"that window {undo}; try a larger k.")
        what = "when the finger was lost" if diff < 0 else "when the extra finger was born, nor which one it is"
        return head + how + f" So the test cannot tell {what}."
    if window[0] == 1:
        what = "when the finger was lost" if diff < 0 else "when the extra finger was born or which one it is"
        return (head + f" Even the last step alone with {k} gives {target} fingers: that window overwrites the hand at "
                f"the end, so the test cannot tell {what}; branch with a window nearer the run's.")

    fit = "" if birth.agreement == 1 else \
        f" ({round(birth.agreement * len(birth.steps))} of {len(birth.steps)} branches fit this)"
    later = f", from step {window[1] - 1} or any later one it does not" if window[1] > 1 else ""
    story = (f"finishing from step {window[0]} or any earlier step gives {target} fingers{later}{fit}")
    redraw = ""
    if birth.changed:
        redraw = f" That branch redraws {birth.changed[birth.steps.index(window[0])]:.0%} of the silhouette."
    when = f"{when_in_run(window, steps)} ({countdown(steps)})"
    if diff < 0:
        return head + f" The finger is lost {when}: {story}." + redraw

    cover = fix_cover(trajectory, birth, b)
    extra = extra_fingers(trajectory, birth, b)
    dropped = [label for label, c in enumerate(cover, start=1) if c < KEPT]
    fix = f"finishing the run with {k} from step {window[0]} gives {target} fingers"
    if extra:
        others = [c for label, c in enumerate(cover, start=1) if label not in extra]
        names = f"Finger {extra[0]} of {fc.count} (the {_ordinal(extra[0])} around the hand from the wrist) is" \
            if len(extra) == 1 else f"Fingers {_listed(extra)} of {fc.count} are"
        text = (f"{head} {names} the extra one{'' if len(extra) == 1 else 's'}: {fix}, keeping the other "
                f"{len(others)} (at least {min(others):.0%} of each is still hand there) and dropping "
                f"finger{'s' if len(extra) > 1 else ''} {_listed(extra)} ({_pct(cover[e - 1] for e in extra)} left). "
                f"{'It is' if len(extra) == 1 else 'They are'} born {when}: {story}.")
        mask = np.isin(fc.regions, extra)
        pixels = "its pixels" if len(extra) == 1 else "their pixels"
    elif len(dropped) > diff:
        text = (f"{head} No single finger is the extra one: {fix} but redraws the hand, dropping fingers "
                f"{_listed(dropped)} ({_pct(cover[d - 1] for d in dropped)} still hand there) and drawing "
                f"{_few(len(dropped) - diff)} other{'s' if len(dropped) - diff > 1 else ''} in their place. The odd count "
                f"is born {when}: {story}.")
        mask = np.isin(fc.regions, dropped)
        pixels = "the pixels of those fingers"
    else:
        kept = [c for c in cover if c >= KEPT]
        lost = (f"drops only finger{'s' if len(dropped) > 1 else ''} {_listed(dropped)} ({_pct(cover[d - 1] for d in dropped)} left) and keeps at "
                f"least {min(kept):.0%} of each other finger") if dropped else \
            f"keeps at least {min(cover):.0%} of every finger"
        text = (f"{head} No finger is the extra one: {fix} yet {lost}, so the count changes through the fingers' "
                f"shapes rather than by dropping {'one' if diff == 1 else f'{diff}'}. The odd count is born {when}: "
                f"{story}.")
        mask = None
    copied = "" if mask is None else _copied(trajectory, mask, window, b, train, top, pixels)
    return text + copied + redraw
