"""Runs for the app: what to run (RunSpec), its result, a bounded run cache, time estimates, and
the pixel a click names. Plain Python and PyTorch (no Streamlit): elsviz/ui draws, tests check."""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch


from ..engine import plan as engine_plan
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


ASK_S = 8.0  # a run estimated above this asks first ("about N s: run it?"); the digits' first run takes 1-2 s
SUBSET_TARGET_S = 5.0  # a subset offered instead of a long run aims at about this (so it runs without asking) ...
MIN_SUBSET = 100  # ... but is never smaller than this (fewer images make a poor training set)

# What one unit of each kind of work costs, in seconds of one thread: on a CPU with the compiled kernel, per width of
# its vector registers (costs_of), fitted by `python -m elsviz.bench --fit` to the steps timed in
# tests/estimate_timings*.json (CPU time; 2-core AMD EPYCs, one with AVX-512, one with AVX2 only, on which this
# project has run; docs/BENCHMARKS.md, "Estimates on this CPU": a hands run at k = 5 takes 1.7x the CPU time through
# the kernel without AVX-512, 0.7x through torch, so one pace cannot carry one set to the other). step: a slice of the
# batch (Python, its tensors); query: an entry of a query window; logit, madd, centre: a logit through the kernel (its
# softmax, the product's multiply-adds, the weighted centres per channel); read: a byte of keys read per tile of 240
# queries; gemm: a multiply-add of torch's products; torch_logit, torch_block: a logit through torch's passes, and
# more in its pruned path; byte: a byte of key table built; key: a key made distinct; gram: a multiply-add of a
# KeySet's principal directions; window: a window hashed and counted.
# On a GPU: a first guess (the H200 of docs/BENCHMARKS.md: 12 T multiply-adds in 2.1 s of the fused kernel).
COSTS = {
    "cpu-avx512": {"step": 3.17e-3, "query": 1.16e-8, "logit": 1.56e-10, "madd": 1.21e-11, "centre": 2.76e-10,
                   "read": 3.87e-11, "gemm": 3.07e-11, "torch_logit": 2.64e-9, "torch_block": 3.02e-9, "byte": 1.9e-9,
                   "key": 4.08e-7, "gram": 5.07e-11, "window": 9.58e-8},
    "cpu-avx2": {"step": 1.72e-3, "query": 2.08e-8, "logit": 4.76e-10, "madd": 1.67e-11, "centre": 3.29e-10,
                 "read": 1.07e-10, "gemm": 4.7e-11, "torch_logit": 2.44e-9, "torch_block": 2.6e-9, "byte": 2.33e-9,
                 "key": 6.02e-7, "gram": 7.65e-11, "window": 1.48e-7},
    "cuda": {"step": 5e-3, "query": 1e-11, "logit": 2e-12, "madd": 1.8e-13, "centre": 0.0, "read": 0.0, "gemm": 1e-13,
             "torch_logit": 2e-11, "torch_block": 0.0, "byte": 5e-11, "key": 2e-8, "gram": 1e-13, "window": 1e-10},
}


def cpu_costs_key() -> str:
    """The COSTS of this CPU: by the width of its vector registers, as torch sees it (the compiled kernel is
    built for the same CPU): 'cpu-avx512', else 'cpu-avx2' (also for older CPUs: the nearest; the pace corrects)."""
    return "cpu-avx512" if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else "cpu-avx2"


def costs_of(device: str) -> dict:
    """COSTS of a device type ('cpu', 'cuda'); on a CPU, those of its vector width (cpu_costs_key)."""
    return COSTS[cpu_costs_key() if device == "cpu" else device]


# The share of a big class's blocks the pruned path computes at t: all down to t_all, then t / t_all, at least
# `floor` (hands, k = 7, docs/ENGINE.md: 52% of the blocks at t = 0.3, 14% at 0.1, 10% at 0.05). Without the
# kernel, tiles of 32 queries take the union of their blocks (measured here: hands, k = 5, a step at t = 0.05
# took 33% of one at t = 0.5, at 0.15 66%).
PRUNED = {True: (0.5, 0.08), False: (0.25, 0.33)}  # kernel -> (t_all, floor)
SHARDS_STEP_S = 0.02  # a step on the Ray engine waits besides for two rounds of calls to its shards and the merge
# (docs/SCALING.md: 17-21 ms per step with 2 local shards, whatever the work)
PACE_MIN_S = 0.3  # a run of less work teaches the pace nothing: its time is mostly overheads the cost leaves out
# (recorded: LS on the digits, 0.13-0.17 s of work, took 0.4-0.9 s beside ELS's 1.1 s of work in 1.7-1.8 s)
THREAD_GAIN = 0.8  # T threads compute about T ** 0.8 times as fast as one (a prior: the pace corrects it)


@dataclass(frozen=True)
class Workload:
    """What a run's cost depends on besides its k and t: the training set (its cache key; family: its
    name, shared by its subsets), the machine, the device type, the output size, the class, the keys
    in play (n images of shape (C, H, W)), the batch, the engine's cache and whether the compiled
    kernel runs (images: the training images in play, for the share of distinct windows). On the Ray
    engine: shards, each holding n of the images (and `threads` threads), all computing at once."""

    dataset: Hashable
    machine: str
    device: str = "cpu"
    size: tuple[int, int] | None = None
    label: int | None = None
    family: str = ""
    n: int = 1
    shape: tuple[int, int, int] = (1, 16, 16)
    batch: int = 1
    cache_bytes: int = 1_500_000_000
    kernel: bool = True
    threads: int = 1
    images: object = field(default=None, compare=False, hash=False, repr=False)
    shards: int = 1


def workload(engine, dataset, machine: str | None = None, size=None, label=None, family: str = "", batch: int = 1,
             n: int | None = None) -> Workload:
    """The Workload of a run on an engine (read duck-typed: device, training set, cache, kernel);
    n: a subset of n images of the set instead (the images of the label, for a conditional run)."""
    imgs = engine.train.images if label is None or engine.train.labels is None else \
        engine.train.images[engine.train.labels == label]
    imgs = imgs if n is None else imgs[torch.randperm(len(imgs), generator=torch.Generator().manual_seed(0))[:n]]
    device = getattr(getattr(engine, "device", None), "type", "cpu")
    cache = getattr(engine, "cache_bytes", None) or 1_500_000_000
    kernel = engine.kernel() != "torch" if callable(getattr(engine, "kernel", None)) else True
    shards = int(getattr(engine, "shards", 1) or 1)  # the Ray engine: its slowest shard's part of the images
    threads = int(getattr(engine, "shard_threads", 1)) if shards > 1 else torch.get_num_threads()
    return Workload(dataset, machine or engine.machine, device, None if size is None else tuple(size), label, family,
                    -(-len(imgs) // shards), tuple(imgs.shape[1:]), batch, int(cache), kernel, threads, imgs, shards)


def class_groups(machine: str, k: int, shape, size=None) -> list[tuple[int, int, int]]:
    """(G, P, S) for each group of equal classes a step at k computes: G classes of P query pixels
    and S key positions each (as the engine groups them; docs/ENGINE.md, "Classes")."""
    _, h, w = shape
    hq, wq = size or (h, w)
    d = k // 2
    if machine == "ls":
        return [(h * w, 1, 1)]
    if machine == "els":
        return [(1, hq * wq, max(h - 2 * d, 0) * max(w - 2 * d, 0))]

    def bands(nq, nt):  # bbELS: (query positions, training positions) of each overhang along one axis
        count: dict = {}
        for i in range(max(nq, nt)):
            for j, size_ in enumerate((nq, nt)):
                if i < size_:
                    count.setdefault((max(0, d - i), max(0, i + d - size_ + 1)), [0, 0])[j] += 1
        return [v for v in count.values() if v[0]]

    groups: dict = {}
    for pr, sr in bands(hq, h):
        for pc, sc in bands(wq, w):
            groups[(pr * pc, sr * sc)] = groups.get((pr * pc, sr * sc), 0) + 1
    return [(g, p, s) for (p, s), g in sorted(groups.items()) if s]


def distinct_share(images: torch.Tensor | None, k: int, engine=None, label: int | None = None) -> float:
    """Share of the distinct windows among the k x k windows that lie inside the training images
    [N, C, H, W] (the keys of ELS's class and bbELS's interior): the engine computes each distinct
    window once (hands: 12% at k = 3, 84% at k = 9; photos: 47-65%, digits 73% at k = 3, all from
    k = 9). From the engine's counts of equal windows where it has them (it keeps them for the run
    that follows), else from its window hashes; 1.0 when neither can be had."""
    d = k // 2
    count = getattr(engine, "tie_counts", None)
    try:
        if count is not None:
            inner = count(k, label)  # [N, H, W]: equal windows of each key's class
            h, w = inner.shape[-2:]
            return float((1.0 / inner[:, d:h - d, d:w - d].double()).mean())
        from ..engine.ties import window_hash

        h, w = images.shape[-2:]
        inner = window_hash(images, k)[:, d:h - d, d:w - d]
        return torch.unique(inner).numel() / max(inner.numel(), 1)
    except Exception:  # an engine without them: every key counted (a longer estimate, never a failure)
        return 1.0


def step_parts(w: Workload, k: int, distinct, costs: dict | None = None) -> list[tuple]:
    """The parts of a step at k: (cache entry or None, its bytes, seconds to build it, seconds of
    computing at every t, seconds of computing that the bounds prune at small t: a function of t, or
    None), following the engine's choice of path per group (docs/ENGINE.md). distinct(): the share
    of distinct keys; costs: COSTS of the device, or others."""
    cost, (c, h, wd) = costs or costs_of(w.device), w.shape
    cpu, n, b, image = w.device == "cpu", w.n, w.batch, c * h * wd
    if w.machine == "is":  # one product with the whole images, torch's softmax passes
        return [(None, 0, 0.0, b * n * (image * cost["gemm"] + cost["torch_logit"]), None)]
    hq, wq = w.size or (h, wd)
    dim, kernel = c * k * k, w.kernel and c in (1, 3)
    per_slice = min(b, max(1, 2**20 // (hq * wq * dim)))  # the batch goes in slices (bounded memory)
    slices = -(-b // per_slice)
    parts = [(("hash", k), n * h * wd * 12, n * h * wd * cost["window"],  # window hashes and tie counts, built once
              slices * cost["step"] + b * hq * wq * dim * cost["query"], None)]  # per slice, its query windows
    fused = cost["logit"] + (dim + 1) * cost["madd"] + c * cost["centre"] if kernel else \
        cost["torch_logit"] + (dim + 1) * cost["gemm"]  # a logit through the kernel (or torch's passes)
    for gi, (g, p, s) in enumerate(class_groups(w.machine, k, w.shape, w.size)):
        logits, table = g * b * p * s * n, g * s * n * (dim + 3 + c) * 4
        cheap = kernel and cpu and min(b, engine_plan.KERNEL_MIN_ROWS) * p >= engine_plan.KERNEL_MIN_ROWS and table <= w.cache_bytes // engine_plan.KEPT_SHARE
        read = engine_plan.TABLE_READ_COST_KERNEL if cheap else engine_plan.TABLE_READ_COST
        if p * s * image <= p * s * dim + read * s * dim:  # embedded: torch's products (the plan's rule)
            rows = 0.0 if kernel and cpu else cost["torch_logit"]  # (the kernel's pass over them: within the product's)
            parts.append((None, 0, 0.0, logits * (image * cost["gemm"] + rows), None))
            continue
        if g == 1 and p * s * n >= engine_plan.PRUNE_MIN_LOGITS and per_slice * p * dim >= engine_plan.PRUNE_MIN_WORK and cpu:  # pruned
            keys = distinct() * s * n
            size = int((keys + 256) * (dim + 2 * c + 5) * 4)
            if size <= w.cache_bytes // engine_plan.KEYSET_SHARE:
                build = s * n * cost["key"] + keys * dim * (dim * cost["gram"] + 8 * cost["byte"])
                reads = slices * -(-per_slice * p // 240) * size  # the keys, read once per tile of 240 queries
                every = b * p * keys * (fused if kernel else fused + cost["torch_block"]) + reads * cost["read"]
                t_all, floor = PRUNED[kernel]
                parts.append((("keys", k, gi), size, build, 0.0,
                              lambda t, e=every, a=t_all, f=floor: e * min(1.0, max(f, t / a))))
                continue
        reads = slices * -(-per_slice * p // 240) * table
        parts.append((("table", k, gi), table, table * cost["byte"],
                      logits * fused + reads * cost["read"], None))
    return parts


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
        self.steps.append((frame.k, float(frame.t), now - self._last))
        self._last = now
        if self.then is not None:
            self.then(frame)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class Estimator:
    """How long a run will take: the cost of the work it implies (step_parts: logits, multiply-adds,
    key tables to build, per path) times the pace of this machine now.

    The cost is in seconds of one thread of the CPU the costs were measured on (COSTS). Key tables
    are built on a step's first use of them and kept in the engine's cache while they fit (a table
    larger than the cache is built again at every step): a simulated LRU of the engines' caches says
    which a run will find. The pace is what runs really took over what the cost said: the median of
    the last KEEP runs of the same set and machine, else of any run on the device, else 1 / the
    threads' gain. So the first run of a set is estimated from its work at the machine's pace of the
    moment, and one run slowed by a busy moment does not move it. Thread-safe: background runs record too.
    """

    KEEP = 3  # runs the pace is the median of (measured on the recorded runs, in the order they ran on a machine
    # whose load came and went: 83% of the estimates within 1.5x of the wall-clock time with 3, 80% with 5 or 7)

    def __init__(self, costs: dict | None = None):
        self.costs = costs  # COSTS of the device by default
        self._held: dict = {}  # budget -> OrderedDict((engine, entry) -> bytes): the simulated caches
        self._paces: dict = {}  # _key(workload) or (device,) -> recent actual / cost
        self._distinct: dict = {}  # (dataset, label, k) -> share of distinct windows
        self._parts: dict = {}  # (workload, k) -> step_parts
        self._lock = threading.RLock()

    def _step_parts(self, w: Workload, k: int, engine=None):
        if (w, k) not in self._parts:
            def distinct():  # without images or engine: the share known for the set (a subset's search)
                key = (w.family, w.label, k, w.dataset, w.n)
                if key not in self._distinct:
                    known = [v for kk, v in sorted(self._distinct.items(), key=lambda kv: -kv[0][4]) if kk[:3] == key[:3]]
                    self._distinct[key] = distinct_share(w.images, k, engine, w.label) \
                        if w.images is not None or engine is not None or not known else known[0]
                return self._distinct[key]

            self._parts[(w, k)] = step_parts(w, k, distinct, self.costs)
        return self._parts[(w, k)]

    def cost(self, w: Workload, ks, ts, engine=None, keep: bool = False) -> list[float]:
        """Seconds of each step at its k and t, from the work alone (the pace not applied); keep: the
        simulated caches keep what the run builds."""
        with self._lock:
            budget = "cpu" if w.device == "cpu" else id(engine)
            held = self._held.setdefault(budget, OrderedDict())
            held = held if keep else OrderedDict(held)
            owner = id(engine) if engine is not None else object()
            plan = []
            for k, t in zip(ks, ts):
                seconds = 0.0
                for entry, size, build, flat, pruned in ([] if k is None else self._step_parts(w, int(k), engine)):
                    key = (owner, w.dataset, w.label, w.size, w.cache_bytes, entry)
                    if entry is not None and key in held:
                        held.move_to_end(key)
                    elif entry is not None:
                        seconds += build
                        if size <= w.cache_bytes:
                            held[key] = size
                            while sum(held.values()) > w.cache_bytes:
                                held.popitem(last=False)
                    seconds += flat + (pruned(t) if pruned else 0.0)
                plan.append(seconds + (SHARDS_STEP_S if w.shards > 1 else 0.0))
            return plan

    @staticmethod
    def _key(w: Workload) -> tuple:
        """Whose runs set a workload's pace: the same device, set family, machine and shards."""
        return (w.device, w.family, w.machine) + ((w.shards,) if w.shards > 1 else ())

    def pace(self, w: Workload) -> float:
        """Seconds taken per second of cost, lately (see the class)."""
        with self._lock:
            recent = self._paces.get(self._key(w)) or self._paces.get((w.device,))
            return sorted(recent)[len(recent) // 2] if recent else w.threads ** -THREAD_GAIN

    def basis(self, w: Workload) -> str:
        """What the pace rests on: 'measured' (runs of this set and machine), 'carried' (runs of others on
        the device) or 'model' (no run yet: the work at this CPU's measured speed)."""
        with self._lock:
            if self._paces.get(self._key(w)):
                return "measured"
            return "carried" if self._paces.get((w.device,)) else "model"

    def step_plan(self, w: Workload, ks, ts, engine=None) -> list[float]:
        """Seconds expected of each step (k and t of each step in the order they run)."""
        pace = self.pace(w)
        return [s * pace for s in self.cost(w, ks, ts, engine)]

    def seconds(self, w: Workload, ks, ts, engine=None) -> float:
        """Seconds expected of a run with these k and t per step."""
        return sum(self.step_plan(w, ks, ts, engine))

    def record(self, w: Workload, steps, engine=None) -> None:
        """Learn the pace from a run's timed steps [(k, t, seconds), ...] (StepClock.steps; a run
        stopped early gives the steps it did)."""
        self.record_total(w, [st[0] for st in steps], [st[1] for st in steps], sum(st[-1] for st in steps), engine)

    def record_total(self, w: Workload, ks, ts, seconds: float, engine=None, cost: float | None = None) -> None:
        """Learn the pace from a run of these k and t that took `seconds` in all (cost: its cost, if known)."""
        cost = sum(self.cost(w, ks, ts, engine, keep=True)) if cost is None else cost
        if cost >= PACE_MIN_S and seconds > 0:
            with self._lock:
                for key in (self._key(w), (w.device,)):
                    paces = self._paces.setdefault(key, [])
                    paces.append(seconds / cost)
                    del paces[:-self.KEEP]


def needs_confirmation(estimate_s: float) -> bool:
    """Whether a run asks before it starts ("about N s: run it?"): whenever it is estimated above ASK_S."""
    return estimate_s > ASK_S


def subset_offer(n: int, seconds_of: Callable[[int], float], target_s: float = SUBSET_TARGET_S,
                 minimum: int = MIN_SUBSET) -> int | None:
    """The subset of a set of n images to offer instead of a long run: the largest round number of
    images (two significant digits) that seconds_of(images) estimates within target_s, never fewer
    than `minimum`; None when the set is small (under 2 x minimum) or the subset would keep more
    than half of it (it would not save much)."""
    if n < 2 * minimum or seconds_of(n // 2) <= target_s:
        return None
    lo, hi = minimum, n // 2
    while hi - lo > 1:  # the time grows with the images: bisect
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if seconds_of(mid) <= target_s else (lo, mid)
    step = 10 ** max(0, len(str(lo)) - 2)  # 137 -> 130, 2,480 -> 2,400
    return max(minimum, lo // step * step)


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
