"""Runs for the app: what to run (RunSpec), its result, a bounded run cache, time estimates, and
the pixel a click names. Plain Python and PyTorch (no Streamlit): elsviz/ui draws, tests check."""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass


from ..machines import MACHINE_NAMES
from ..sampling import sample
from ..schedule import locality_schedule

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
    background: bool = False  # computed ahead in the background (live k), not while the user waited

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


# -- how long will it take -------------------------------------------------------------------------
def app_threads(cores: int | None, environ) -> int | None:
    """The torch threads the app's engines use: None (leave torch's choice) when OMP_NUM_THREADS or
    ELSVIZ_THREADS says so, else one core fewer than the machine has (at least 1), for the browser
    and the server. Measured on the 2-core CPU with headless Chromium on the same machine: the
    digits' first run took 7.2 s with 2 threads (OpenMP threads wait for each other while the
    browser renders) and 4.9 s with 1; the page showed after 13.6 s and 10.3 s."""
    if environ.get("ELSVIZ_THREADS"):
        return max(1, int(environ["ELSVIZ_THREADS"]))
    if environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (cores or 1) - 1)


LONG_S = 20.0  # a run estimated above this asks first (when its work is also above GATE_WORK)
GATE_WORK = 3e8  # ... and only when one step's work count (step_work) is above this: 32x32 sets, never the
# 16x16 digits at their own size (1,797 x 256 keys x 256 pixels = 1.2e8 per step; hands: 1.0e9; photos: 6.3e9)
SUBSET_TARGET_S = 10.0  # a subset offered instead of a long run aims at about this ...
MIN_SUBSET = 100  # ... but is never smaller than this (fewer images make a poor training set)

# Work per second (step_work units) before anything was measured. Measured, warm, one thread (the app's
# engines on a 2-core CPU), k = 5, 20 steps, the fused CPU kernel (docs/BENCHMARKS.md): digits bbELS 3.0e9,
# ELS 2.6e9; hands 6.6e9 and 5.4e9; photos 6.3e9 and 5.2e9 where their key tables fit the engine's cache
# (a sixteenth of the memory; with 384 MB the photos ran at 3.4e8, now about 2e9: tables rebuilt in
# pieces at every step). The CPU priors are the digits' figures, a little lower for a machine that is
# not quiet: a first guess then asks before the photos (about 40 s), not before the hands (about 7 s).
# For CUDA, the H100 figures of docs/BENCHMARKS.md for the torch path (bbELS: 2.5e10 on the digits, 9e10
# on 60,000 28x28 images; the Triton kernel, now the default there, was 1.5x that on an H200), kept
# low for a first guess, with IS and LS scaled by the same factor as the CPU's.
PRIOR_RATES = {
    ("cpu", "is"): 5e4, ("cpu", "ls"): 1e7, ("cpu", "els"): 2.3e9, ("cpu", "bbels"): 2.8e9,
    ("cuda", "is"): 5e6, ("cuda", "ls"): 1e9, ("cuda", "els"): 2e10, ("cuda", "bbels"): 2e10,
}
RATE_EXPONENT = 0.35  # a rate carried to a workload with x times the work is x ** 0.35 times higher: overheads
# weigh less in larger runs. Measured at k = 5 on the 2-core CPU, exponents 0.1-0.5: digits 100 -> 1,797 images
# (18x the work) 2x the rate (0.24); hands 100 -> 300 1.1x (0.1); in the app, digits 150 -> hands 1,000 (100x the
# work) 9x (0.48).
PRIOR_BUILD_STEPS = 3.0  # the first step at a new k builds its key tables: about 3 warm steps (measured: 0.2-10)


def step_work(n: int, shape: tuple[int, int, int], machine: str, size: tuple[int, int] | None = None) -> float:
    """A work count for one denoising step: keys x query pixels x channels.

    n: the training images that serve as keys (those of the class, for a conditional run);
    shape: (C, H, W) of the training images; size: (H, W) of the output, None for the training
    size. Used only to compare runs of one machine (see Estimator), so the engine's constant
    factors cancel; the window size k is left out (its effect is learned per k by the Estimator).
    """
    c, h, w = shape
    hq, wq = size or (h, w)
    keys = n if machine in ("is", "ls") else n * h * w
    pixels = 1 if machine == "is" else hq * wq
    return float(keys * pixels * c)


def run_cost(n: int, shape: tuple[int, int, int], spec: RunSpec) -> float:
    """step_work of the spec times its steps (steps - 1 denoising calls)."""
    return (spec.steps - 1) * step_work(n, shape, spec.machine, spec.size)


def needs_confirmation(work: float, estimate_s: float, guess: bool = False) -> bool:
    """Whether a run asks before it starts: only a truly long one, i.e. both its step's work count is
    above GATE_WORK (a 32x32 set, not the digits at their size, whatever the machine's load) and it
    is estimated above LONG_S; above 2 x LONG_S when the estimate is a guess (nothing of this set
    has run yet: such guesses came out 1.7-2.5x too long on the 2-core CPU)."""
    return work > GATE_WORK and estimate_s > LONG_S * (2 if guess else 1)


def subset_size(n: int, estimate_s: float, target_s: float) -> int:
    """How many of n training images give a run of about target_s, if n of them take estimate_s."""
    if estimate_s <= target_s:
        return n
    return max(1, min(n, int(n * target_s / estimate_s)))


def subset_offer(n: int, estimate_s: float, target_s: float = SUBSET_TARGET_S, minimum: int = MIN_SUBSET) -> int | None:
    """The subset to offer instead of a run of n images estimated at estimate_s, or None.

    About target_s worth of images (a run's time grows as its work ** (1 - RATE_EXPONENT): a tenth
    of the images takes about a fifth of the time, not a tenth), rounded down to a round number,
    never fewer than `minimum`; None when the set is small (under 2 x minimum) or when the subset
    would keep more than half the set (it would not save much).
    """
    if n < 2 * minimum:
        return None
    share = min(1.0, target_s / max(estimate_s, 1e-9)) ** (1 / (1 - RATE_EXPONENT))
    sub = max(minimum, int(n * share))
    step = 10 ** max(0, len(str(sub)) - 2)  # two significant digits: 137 -> 130, 2,480 -> 2,400
    sub = max(minimum, sub // step * step)
    return sub if sub <= n // 2 else None


@dataclass(frozen=True)
class Workload:
    """What a run's speed depends on besides k: the training set (its cache key), the machine, the
    device type ('cpu', 'cuda'), the output size and the class (a conditional run has fewer keys)."""

    dataset: Hashable
    machine: str
    device: str = "cpu"
    size: tuple[int, int] | None = None
    label: int | None = None
    family: str = ""  # the set's name: its subsets share it, so they learn from each other first


class StepClock:
    """A sample() callback that times every step: steps = [(k, t, seconds), ...] in the order run.

    Wraps another callback (a progress bar), which is called after the step is timed.
    """

    def __init__(self, then: Callable | None = None):
        self.then = then
        self.steps: list[tuple[int, float, float]] = []
        self.start = self._last = time.perf_counter()

    def __call__(self, frame):
        now = time.perf_counter()
        self.steps.append((int(frame.k), float(frame.t), now - self._last))
        self._last = now
        if self.then is not None:
            self.then(frame)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class Estimator:
    """How long a run will take, learned from the steps the app has timed, per workload and k.

    Each timed step is kept as a rate (step_work per second) under (workload, k); k matters (on the
    digits, bbELS runs 10x faster per step at k = 15 than at k = 3). The first step at a k on an
    engine builds that k's key tables: it is cold, kept apart as a build time, never as a rate. A
    rate of a run is its warm steps' work over their time; the estimate takes the median of the
    last KEEP runs' rates, so one run slowed by a busy moment (or sped by a quiet one) does not move
    it, while a lasting change of load does, within a few runs. Every run (foreground, background,
    branch) corrects it.

    Steps at different noise levels t cost differently on some sets (the hands: a step at t = 0.9
    takes 6-10x one at t = 0.2, when most windows have settled on one flat patch; the digits: about
    the same; and where the slow steps end depends on k): a profile per set, machine, device and k
    (PROFILE_BINS bins of t, each the median of the recent full runs' step time there over their
    mean; the nearest k's where this k has none) weighs each step, so a branch from a late step and
    the time left during a run are estimated from the steps still to come. Flat until a full run
    (one k, from the top) of that set has been timed.

    Never measured: the workload's rate at the nearest k measured; else the rate of another workload
    of the same machine and device (rates in step_work units carry over between sets, roughly):
    of the same set if one was measured (another subset), else the one closest in work; else
    PRIOR_RATES. A carried rate is scaled by (work ratio) ** RATE_EXPONENT. A build of a k not yet
    seen on the engine costs the workload's median build (in warm steps), else PRIOR_BUILD_STEPS
    (builds of small runs, dominated by overheads, say little about large ones).
    Thread-safe: background runs record too.
    """

    KEEP = 7
    PROFILE_BINS = 10

    def __init__(self, priors: dict | None = None, build_steps: float = PRIOR_BUILD_STEPS):
        self.priors = dict(PRIOR_RATES if priors is None else priors)
        self.build_steps = build_steps
        self._rates: dict[tuple, list[float]] = {}  # (workload, k) -> recent warm rates
        self._builds: dict[Workload, list[float]] = {}  # workload -> recent builds, in warm steps
        self._seen: set = set()  # (engine token, workload, k): key tables built
        self._work: dict[Workload, float] = {}  # workload -> its step_work (to find the closest one)
        self._profiles: dict[tuple, list[list[float]]] = {}  # (device, machine, family, k) -> per bin, recent weights
        self._lock = threading.Lock()

    @staticmethod
    def _k(workload: Workload, k) -> int | None:
        return None if workload.machine == "is" else int(k)

    @staticmethod
    def _steps(steps):
        """[(k, t or None, seconds)] from [(k, t, seconds)] or [(k, seconds)]."""
        return [(st[0], st[1] if len(st) == 3 else None, st[-1]) for st in steps]

    def cold(self, workload: Workload, k, engine=None) -> bool:
        """Whether a step at k would build key tables first (k never run on this engine)."""
        return (id(engine), workload, self._k(workload, k)) not in self._seen

    def _bin(self, t) -> int | None:
        return None if t is None else min(max(int(t * self.PROFILE_BINS), 0), self.PROFILE_BINS - 1)

    def weight(self, workload: Workload, t, k=None) -> float:
        """How much a step at t costs against the mean step of a full run at k (the nearest k measured on
        the set; 1.0 when none was)."""
        b = self._bin(t)
        k = None if k is None else self._k(workload, k)
        ks = [key[3] for key in self._profiles if key[:3] == (workload.device, workload.machine, workload.family)]
        if b is None or not ks:
            return 1.0
        near = min(ks, key=lambda kk: (0 if kk is None or k is None else abs(kk - k), kk or 0))
        bins = self._profiles[(workload.device, workload.machine, workload.family, near)]
        return self._median(bins[b]) if bins[b] else 1.0

    def _learn_profile(self, workload: Workload, k, warm) -> None:
        """warm: [(t, seconds)] of one k; a run covering most bins of t teaches the set's profile."""
        by_bin: dict[int, list[float]] = {}
        for t, seconds in warm:
            if t is not None and seconds > 0:
                by_bin.setdefault(self._bin(t), []).append(seconds)
        if len(by_bin) < self.PROFILE_BINS - 2:
            return
        means = {b: sum(v) / len(v) for b, v in by_bin.items()}
        mean = sum(means.values()) / len(means)
        bins = self._profiles.setdefault((workload.device, workload.machine, workload.family, k),
                                         [[] for _ in range(self.PROFILE_BINS)])
        for b, m in means.items():
            bins[b].append(m / mean)
            del bins[b][:-self.KEEP]

    def record(self, workload: Workload, work: float, steps, engine=None) -> None:
        """Learn from a run's timed steps [(k, t, seconds), ...] (StepClock.steps; t may be left out),
        work = step_work."""
        by_k: dict = {}
        with self._lock:
            self._work[workload] = work
            for k, t, seconds in self._steps(steps):
                k = self._k(workload, k)
                seen = (id(engine), workload, k)
                entry = by_k.setdefault(k, {"warm": [], "cold": None})
                if seen not in self._seen:
                    self._seen.add(seen)
                    entry["cold"] = (t, seconds)
                else:
                    entry["warm"].append((t, seconds))
            for k, entry in by_k.items():
                self._learn_profile(workload, k, entry["warm"])
            for k, entry in by_k.items():
                warm = [(t, s) for t, s in entry["warm"] if s > 0]
                if warm and work > 0:  # seconds of an average step: each weighed by its t
                    rates = self._rates.setdefault((workload, k), [])
                    rates.append(work * len(warm) / sum(s / self.weight(workload, t, k) for t, s in warm))
                    del rates[:-self.KEEP]
                if entry["cold"] is not None:
                    t, seconds = entry["cold"]
                    step = self._step_seconds(workload, work, k, t)
                    builds = self._builds.setdefault(workload, [])
                    builds.append(max(seconds - step, 0.0) / step)
                    del builds[:-self.KEEP]

    @staticmethod
    def _median(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2]

    def basis(self, workload: Workload) -> str:
        """What an estimate for the workload rests on: 'measured' (runs of it), 'carried' (runs of another
        set or subset, scaled) or 'prior' (nothing comparable has run yet)."""
        with self._lock:
            if any(w == workload for (w, _) in self._rates):
                return "measured"
            if any(w.machine == workload.machine and w.device == workload.device for (w, _) in self._rates):
                return "carried"
            return "prior"

    def rate(self, workload: Workload, k) -> float:
        """Work per second expected of an average warm step at k (see the class's note for what stands in)."""
        with self._lock:
            return self._rate(workload, self._k(workload, k))

    def _rate(self, workload: Workload, k) -> float:
        def nearest(w):
            ks = [kk for (ww, kk) in self._rates if ww == w]
            if not ks:
                return None
            best = min(ks, key=lambda kk: (0 if kk is None or k is None else abs(kk - k), kk or 0))
            return self._median(self._rates[(w, best)])

        own = nearest(workload)
        if own is not None:
            return own
        # another workload of this machine and device: the same set first (a subset of it), then
        # the one whose work is closest (small runs spend more of their time on overheads)
        others = [w for w in {w for (w, _) in self._rates}
                  if w.machine == workload.machine and w.device == workload.device]
        if others:
            mine = self._work.get(workload, 1.0)

            def closeness(w):
                return w.family != workload.family, abs(math.log(self._work[w] / mine))

            other = min(others, key=closeness)
            return nearest(other) * (mine / self._work[other]) ** RATE_EXPONENT
        return self.priors.get((workload.device, workload.machine), min(self.priors.values()))

    def _step_seconds(self, workload, work, k, t=None) -> float:
        return work / self._rate(workload, k) * self.weight(workload, t, k)

    def step_plan(self, workload: Workload, work: float, ks, engine=None, ts=None) -> list[float]:
        """Seconds expected of each step, for the k (and, if given, the t) of each step in the order
        they run (a build added to the first step at a k not yet run on the engine)."""
        with self._lock:
            self._work.setdefault(workload, work)
            plan, fresh = [], set()
            builds = self._builds.get(workload)
            build = self._median(builds) if builds else self.build_steps
            for i, k in enumerate(ks):
                k = self._k(workload, k)
                seconds = self._step_seconds(workload, work, k, None if ts is None else ts[i])
                if (id(engine), workload, k) not in self._seen and k not in fresh:
                    fresh.add(k)
                    seconds += build * self._step_seconds(workload, work, k)
                plan.append(seconds)
            return plan

    def seconds(self, workload: Workload, work: float, ks, engine=None, ts=None) -> float:
        """Seconds expected of a run with these k (and t) per step (see step_plan)."""
        return sum(self.step_plan(workload, work, ks, engine, ts))


def run_ks(spec: RunSpec, from_step: int | None = None) -> list[int]:
    """The k of each denoising step a run does, in order (steps S-1 .. 1, or from_step .. 1 for a branch)."""
    ks = spec.schedule()
    start = spec.steps - 1 if from_step is None else from_step
    return [ks[i] for i in range(start, 0, -1)]


def run_ts(spec: RunSpec, from_step: int | None = None) -> list[float]:
    """The noise level t = i / steps of each denoising step a run does, in the order of run_ks."""
    start = spec.steps - 1 if from_step is None else from_step
    return [i / spec.steps for i in range(start, 0, -1)]


def time_left(plan: list[float], done: int, elapsed: float) -> float:
    """Seconds left after `done` steps of a run whose steps were expected to take plan[i] and took
    `elapsed` in all: what is left of the plan, at the pace of the steps so far."""
    ahead = sum(plan[done:])
    behind = sum(plan[:done])
    if done <= 0 or behind <= 0:
        return ahead
    return ahead * elapsed / behind


def left_text(seconds: float) -> str:
    """'about 40 s left', 'about 3 min left'; '' under 2 s (not worth saying)."""
    if seconds < 2:
        return ""
    if seconds < 90:
        return f"about {seconds:.0f} s left"
    return f"about {seconds / 60:.0f} min left"


def neighbour_ks(k: int, kmax: int | None, count: int = 4) -> list[int]:
    """The window sizes next to k, nearest first (k + 2, k - 2, k + 4, k - 4, ...), odd, within 1..kmax."""
    out, d = [], 2
    top = kmax if kmax is not None else k + 2 * count
    while len(out) < count and (k + d <= top or k - d >= 1):
        out += [v for v in (k + d, k - d) if 1 <= v <= top]
        d += 2
    return out[:count]


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
