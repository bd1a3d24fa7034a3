"""Hold the machines against a trained network: the paper's agreement, comparisons and calibration.

    from elsviz import agreement, calibrate, compare, load_network, Engine
    net = load_network("nets/digits-resnet")
    train = net.train.load()
    ks = calibrate(net, Engine(train, "bbels"), seeds=range(10))      # k per step, fitted to the network
    result = compare(net, train, seeds=range(32), k=ks)               # network vs bbELS, ELS, LS, IS
    print(result.summary())
    every = compare(net, train, seeds=4, k=ks, machines="all")        # all nine machines
    every.curve("pca", mode="network", metric="r2")                   # [(step, median r^2)], noisiest first

Two ways to hold a machine against the network (docs/AGREEMENT.md, "Two ways to compare"):
"own": the machine runs its own reverse process from the network's noise, and the two trajectories
are compared step by step and at the end; "network": at every step of the network's trajectory the
machine denoises the network's own x_t, so a machine is judged on the inputs the network saw, one
step at a time, and its errors do not compound.

Agreement (docs/THEORY.md, "Agreement with a network"): centre each output, normalise it to
unit length, take the dot product: a Pearson correlation in [-1, 1] (the paper's text calls it
r^2). `r2` is the coefficient of determination 1 - SS_res / SS_tot of the machine's output as a
prediction of the network's, which also punishes a wrong brightness or contrast.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from ..errors import ElsvizError
from ..machines import BY_KEY, MACHINE_NAMES, MACHINES, k_limit, machine_options
from ..sampling import Trajectory, sample, start_noise
from ..schedule import alpha_sigma, check_k, locality_schedule

MACHINE_ORDER = ("bbels", "els", "ls", "is")  # compare's default: Kamb & Ganguli's four, bbELS first
NAMES = MACHINE_NAMES  # machine key -> the name pages and tables print (elsviz.machines)
LOCAL_MACHINES = tuple(m for m in MACHINES if BY_KEY[m].local)  # the machines with a window k (calibrate)
MODES = {
    "own": "each machine runs its own trajectory from the network's noise",
    "network": "at every step the machine denoises the network's own x_t (one step at a time: its errors do not "
               "compound)",
}
METRICS = ("agreement", "r2")


# ----------------------------------------------------------------------------------------------
# The two scores
# ----------------------------------------------------------------------------------------------
def _pair(u, v) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(u, torch.Tensor) or not isinstance(v, torch.Tensor):
        raise ElsvizError(f"agreement takes two tensors, got {type(u).__name__} and {type(v).__name__}.")
    if u.shape != v.shape:
        raise ElsvizError(f"agreement needs two outputs of the same shape, got {tuple(u.shape)} and {tuple(v.shape)}.")
    if u.numel() < 2:
        raise ElsvizError("agreement needs outputs of at least two pixels.")
    return u.detach().double().flatten().cpu(), v.detach().double().flatten().cpu()


def agreement(u: torch.Tensor, v: torch.Tensor) -> float:
    """The paper's agreement of two outputs of the same shape (e.g. two `traj.final` [1, C, H, W]).

    Each is centred (its mean subtracted) and scaled to unit length; the agreement is their dot
    product, in [-1, 1]: 1 means the same picture up to brightness and contrast. NaN when either
    output is constant (no pattern to agree with).
    """
    a, b = _pair(u, v)
    a, b = a - a.mean(), b - b.mean()
    na, nb = a.norm(), b.norm()
    if na <= 1e-12 * a.numel() or nb <= 1e-12 * b.numel():
        return math.nan
    return float((a / na) @ (b / nb))


def r2(target: torch.Tensor, prediction: torch.Tensor) -> float:
    """The coefficient of determination 1 - SS_res / SS_tot of `prediction` for `target` (same shape).

    SS_res = sum (target - prediction)^2, SS_tot = sum (target - mean(target))^2. 1 is a perfect
    prediction, 0 no better than the target's mean, and it can be negative. NaN for a constant target.
    """
    y, p = _pair(target, prediction)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot <= 1e-24 * y.numel():
        return math.nan
    return 1.0 - float(((y - p) ** 2).sum()) / ss_tot


def median(values: Iterable[float]) -> float:
    """The median of the numbers that are not NaN (NaN if none)."""
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def spread(values: Iterable[float]) -> tuple[float, float, float]:
    """(lower quartile, median, upper quartile) of the numbers that are not NaN: the middle half of the
    seeds lies between the quartiles. Quartiles by linear interpolation between the sorted values (as
    numpy.percentile does); one value is all three; (NaN, NaN, NaN) if none."""
    vals = sorted(v for v in values if not math.isnan(v))
    if not vals:
        return math.nan, math.nan, math.nan

    def at(q):
        pos = q * (len(vals) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(vals) - 1)
        return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)

    return at(0.25), at(0.5), at(0.75)


# ----------------------------------------------------------------------------------------------
# Baselines: what agreement two unrelated pictures reach
# ----------------------------------------------------------------------------------------------
BASELINES = {
    "other-seed": "the network, another seed",
    "random-image": "a random training image",
    "nearest-image": "the nearest training image",
}


def _unit(x: torch.Tensor) -> torch.Tensor:
    """[N, ...] -> [N, P] rows centred and scaled to unit length (constant rows stay zero)."""
    x = x.detach().double().flatten(1).cpu()
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest_images(outputs: torch.Tensor, images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[int]]:
    """For each output [S, C, H, W]: its agreement with the training image [N, C, H, W] it agrees with
    most, and that image's index. The best any machine that returns a training image (IS) can do."""
    if tuple(outputs.shape[1:]) != tuple(images.shape[1:]):
        raise ElsvizError(f"outputs of {tuple(outputs.shape[1:])} cannot be held against training images of "
                          f"{tuple(images.shape[1:])}.")
    u = _unit(outputs)  # [S, P]
    best = torch.full((u.shape[0],), -math.inf, dtype=torch.float64)
    where = torch.zeros(u.shape[0], dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        scores = u @ _unit(images[start:start + chunk]).T  # [S, chunk]
        value, index = scores.max(1)
        better = value > best
        best = torch.where(better, value, best)
        where = torch.where(better, index + start, where)
    return best.tolist(), where.tolist()


def random_images(seeds: list[int], n: int) -> list[int]:
    """For each seed, a training image index drawn at random from n (the seed's own generator, so the
    same seed always draws the same image)."""
    return [int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(int(s)))) for s in seeds]


def baselines(outputs: torch.Tensor, images: torch.Tensor, seeds) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """What agreement unrelated pictures reach, per seed, beside a network's outputs [S, C, H, W]:

    other-seed:    the network's output for the next seed in the list (the last seed: the first),
                   two pictures the same network drew from different noise (NaN with one seed)
    random-image:  a training image drawn at random with the seed (random_images)
    nearest-image: the training image that agrees most with the output (nearest_images)

    Returns ({name: [agreement per seed]}, {name: [index per seed]}): the other seed, or the training image.
    """
    seeds = list(seeds)
    n = len(seeds)
    if outputs.shape[0] != n:
        raise ElsvizError(f"{outputs.shape[0]} outputs for {n} seeds: give one seed per output.")
    other = [(s + 1) % n for s in range(n)]
    chosen = random_images(seeds, images.shape[0])
    near, near_idx = nearest_images(outputs, images)
    values = {
        "other-seed": [math.nan if n == 1 else agreement(outputs[s], outputs[other[s]]) for s in range(n)],
        "random-image": [agreement(outputs[s], images[chosen[s]]) for s in range(n)],
        "nearest-image": near,
    }
    return values, {"other-seed": [seeds[o] for o in other], "random-image": chosen, "nearest-image": near_idx}


def scale_sentence(result: "Comparison", network: str | None = None, machines=None) -> str:
    """How to read the agreement of a comparison, from its own baselines, in words:

    "For scale, on these 4 seeds (medians), the network agrees at 0.58 with its own output for
    another seed, at 0.53 with a random training image and at 0.87 with the nearest training
    image. bbELS (0.98) lies above all three; ELS (0.55) lies between a random training image and
    another seed's output; IS (0.77) lies between another seed's output and the nearest training image."

    Every number is a median over the seeds; "above", "between", "below" and "level with" compare
    the medians as stated, to two decimals.
    """
    net = network or result.main_network
    base = {b: median(v) for b, v in result.baselines.get(net, {}).items()}
    base = {b: v for b, v in base.items() if not math.isnan(v)}
    if not base:
        return ""
    n = len(result.seeds)
    parts = {"other-seed": "with its own output for another seed", "random-image": "with a random training image",
             "nearest-image": "with the nearest training image"}
    said = [f"at {v:.2f} {parts[b]}" for b, v in base.items()]
    said = said[0] if len(said) == 1 else ", ".join(said[:-1]) + " and " + said[-1]
    text = f"For scale, on these {n} seed{'s' if n > 1 else ''} (medians), the network agrees {said}."
    if "other-seed" not in base and n == 1:
        text += " (Another seed's output needs two seeds.)"
    ranked = sorted(base.items(), key=lambda kv: kv[1])  # lowest first
    where = []
    for m in machines or [m for m in result.machines if m in result.agreement.get(net, {})]:
        v = median(result.agreement[net][m])
        if math.isnan(v):
            continue
        # compared as stated, to two decimals: "0.13 lies above 0.13" would read as a contradiction
        below = [b for b, bv in ranked if round(bv, 2) < round(v, 2)]
        above = [b for b, bv in ranked if round(bv, 2) > round(v, 2)]
        every = {1: None, 2: "both", 3: "all three"}[len(ranked)]
        level = [b for b, bv in ranked if round(bv, 2) == round(v, 2)]
        if level:
            place = f"level with {_baseline_name(level[0])}"
        elif not above:
            place = f"above {every or _baseline_name(ranked[0][0])}"
        elif not below:
            place = f"below {every or _baseline_name(ranked[0][0])}"
        else:
            place = f"between {_baseline_name(below[-1])} and {_baseline_name(above[0])}"
        where.append(f"{NAMES.get(m, m)} ({v:.2f}) lies {place}")
    return text + (" " + "; ".join(where) + "." if where else "")


def _baseline_name(b: str) -> str:
    return {"other-seed": "another seed's output", "random-image": "a random training image",
            "nearest-image": "the nearest training image"}[b]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def _seeds(seeds) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = range(seeds)
    try:
        out = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise ElsvizError(f"seeds must be a number of seeds or a list of ints, got {seeds!r}.") from None
    if not out:
        raise ElsvizError("Give at least one seed.")
    return out


def _words(value, what: str) -> list[str]:
    """A string (comma-separated words) or a list of them -> the words, lower case, in order."""
    items = [value] if isinstance(value, str) else value
    try:
        return [part.strip().lower() for item in items for part in str(item).split(",") if part.strip()]
    except TypeError:
        raise ElsvizError(f"{what}, got {value!r}.") from None


def machine_keys(machines) -> list[str]:
    """The machines to compare, as keys in the order given, each once: "all" (or a list holding "all")
    means every machine in elsviz.machines order (is ls els bbels nearest wiener pca pspc cfdm); a string
    may list several, comma-separated ("bbels,pca"). Unknown names raise ElsvizError listing the machines."""
    names = _words(machines, "machines must be a machine key, 'all' or a list of keys")
    if "all" in names:
        return list(MACHINES)
    unknown = [m for m in names if m not in BY_KEY]
    if unknown:
        raise ElsvizError(f"Unknown machine {unknown[0]!r}; the machines are {', '.join(MACHINES)} "
                          "(or 'all' for every one).")
    if not names:
        raise ElsvizError(f"Give at least one machine to compare with: {', '.join(MACHINES)} or 'all'.")
    return list(dict.fromkeys(names))


def mode_keys(modes) -> list[str]:
    """The modes to run (MODES), in MODES order: a string ("own,network") or a list; others raise ElsvizError."""
    names = _words(modes, "modes must be 'own', 'network' or both")
    unknown = [m for m in names if m not in MODES]
    if unknown or not names:
        raise ElsvizError(f"Unknown mode {(unknown or [''])[0]!r}: give 'own' ({MODES['own']}), 'network' "
                          f"({MODES['network']}) or both.")
    return [m for m in MODES if m in names]


def _options(options, machines: list[str]) -> dict[str, dict]:
    """{machine: its checked settings, defaults filled in} for the compared machines that were given some."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ElsvizError(f"options must be {{machine: {{setting: value}}}}, e.g. {{'pca': {{'threshold': 0.05}}}}; "
                          f"got {type(options).__name__}.")
    out = {}
    for m, given in options.items():
        if m not in BY_KEY:
            raise ElsvizError(f"options name an unknown machine {m!r}; the machines are {', '.join(MACHINES)}.")
        if not isinstance(given, dict):
            raise ElsvizError(f"options[{m!r}] must be a dict {{setting: value}}, got {type(given).__name__}.")
        own = [o.name for o in BY_KEY[m].options]
        for name in given:
            if name not in own:
                takes = f"its settings are {', '.join(own)}" if own else "it has none"
                raise ElsvizError(f"{NAMES[m]} has no setting {name!r}: {takes}.")
        if m in machines:
            out[m] = machine_options(m, given)
    return out


def noise(denoiser, seeds, shape=None) -> torch.Tensor:
    """The starting noise of `sample(denoiser, seed=s)` for every seed, stacked: [S, C, H, W]."""
    shape = tuple(shape or denoiser.train.shape)
    return torch.cat([start_noise(denoiser, s, (1, *shape)) for s in _seeds(seeds)])


def resample(ks, steps: int) -> list[int]:
    """A schedule k[0..S-1] for another number of steps, by nearest time (as presets are resampled)."""
    ks = [int(k) for k in ks]
    if len(ks) == steps:
        return ks
    return [ks[round(i * (len(ks) - 1) / (steps - 1))] for i in range(steps)]


def _check_pair(network, train) -> None:
    shape = tuple(train.shape)
    if tuple(network.train.shape) != shape:
        c, h, w = network.train.shape
        raise ElsvizError(f"The network was trained on {c}-channel {h}x{w} images, the training set {train.name!r} "
                          f"holds {shape[0]}-channel {shape[1]}x{shape[2]} ones: compare it with the set it was "
                          f"trained on ({network.train.name}).")


def _schedule(network, k, steps: int, machines=("bbels",)) -> list[int]:
    if k is None or (isinstance(k, str) and k == "calibrated"):
        if getattr(network, "schedule", None) is None:
            local = [NAMES[m] for m in machines if BY_KEY[m].local]
            raise ElsvizError(f"This network has no calibrated schedule yet, and {', '.join(local)} "
                              f"take{'s' if len(local) == 1 else ''} a window k: "
                              "run elsviz calibrate on it, or give k (an odd int, a preset such as mnist-resnet, or a "
                              "list of k per step).")
        return resample(network.schedule, steps)
    if isinstance(k, (list, tuple)) and len(k) != steps:
        return resample(locality_schedule(list(k), len(k)), steps)
    return locality_schedule(k, steps)


# ----------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """Which window size k makes a machine's score most like a network's, step by step.

    schedule: k[0..steps-1] (k[i] = median over samples of the best k at step i, rounded to odd;
    k[0] = k[1], never used). ks: the candidates. cosine[i][j][s]: cosine similarity of the
    machine's score with k = ks[j] and the network's at step i for sample s (None for i = 0).
    best[i][s]: the best k of sample s at step i.
    """

    schedule: list[int]
    steps: int
    machine: str
    seeds: list[int]
    ks: list[int]
    cosine: list
    best: list
    label: int | None = None

    def to_json(self) -> dict:
        return {"schedule": self.schedule, "steps": self.steps, "machine": self.machine, "seeds": self.seeds,
                "ks": self.ks, "best": self.best, "label": self.label,
                "cosine_median": [None if c is None else [median(row) for row in c] for c in self.cosine]}


def _odd_median(values: list[int]) -> int:
    """The median of odd ks, rounded to an odd k; halfway (the median of 3 and 5 is 4) rounds up."""
    m = statistics.median(values)
    return 2 * math.floor((m - 1) / 2 + 0.5) + 1


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per batch item of [B, ...] tensors -> [B]."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


def calibration(network, engine, seeds=range(1000, 1010), steps: int = 20, ks=None, label: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> Calibration:
    """Fit a locality schedule to a network, as the paper did (see calibrate); with the details."""
    seeds = _seeds(seeds)
    if hasattr(network, "train") and hasattr(network.train, "shape"):
        _check_pair(network, engine.train)
    c, h, w = engine.train.shape
    if not BY_KEY[engine.machine].local:
        raise ElsvizError(f"{NAMES[engine.machine]} has no window k to calibrate; calibrate one of the machines with a "
                          f"k: {', '.join(LOCAL_MACHINES)}.")
    lim = k_limit(engine.machine, (h, w))
    if ks is None:
        ks = range(1, max(h, w) + 1, 2)
    # a candidate beyond what the machine takes here becomes its largest k (ELS's and PSPC's fit in the image)
    ks = list(dict.fromkeys(min(check_k(k), lim) for k in ks))
    x0 = noise(network, seeds, (c, h, w))  # as sample(network, seed=s) draws it
    cosine: list = [None] * steps
    best: list = [None] * steps
    schedule = [0] * steps
    done = [0]

    def score_all(frame):
        a, b = alpha_sigma(frame.t)
        target = -(frame.x - a * frame.mean.to(frame.x.device)) / (b * b)  # the network's score [S, C, H, W]
        rows = []
        for k in ks:
            post = engine.denoise(frame.x.to(engine.device), frame.t, k, label=label)
            rows.append(_cos(post.score.cpu(), target.cpu()))  # [S]
        table = torch.stack(rows)  # [K, S]
        cosine[frame.i] = table.tolist()
        best[frame.i] = [ks[j] for j in table.argmax(0).tolist()]
        schedule[frame.i] = _odd_median(best[frame.i])
        done[0] += 1
        if progress is not None:
            progress(done[0], steps - 1)

    sample(network, x=x0, steps=steps, label=label, callback=score_all)
    schedule[0] = schedule[1]
    return Calibration(schedule, steps, engine.machine, seeds, ks, cosine, best, label)


def calibrate(network, engine, seeds=range(1000, 1010), steps: int = 20, ks=None, label: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> list[int]:
    """The locality schedule of `engine`'s machine that best matches `network`: a list of `steps` odd ints.
    The machine must take a window k (LOCAL_MACHINES: ls, els, bbels, pspc); others raise ElsvizError.

    Along the network's own trajectory from the noise of each seed, at every step, each candidate
    window k (odd, 1 up to the image size; `ks` to choose others; both within the machine's k_limit,
    so ELS's and PSPC's stop at the image's smaller side) gives the machine's score; the
    k whose score has the highest cosine similarity with the network's wins. The schedule is the
    median winner over the seeds, rounded to an odd k. The default seeds 1000 .. 1009 leave the
    seeds a comparison uses (0, 1, ...) out of the fit. `network` is any denoiser whose
    `denoise(x, t, label=...)` has `.mean`. Usable as sample(..., k=schedule).
    progress(done, total) after each step.
    """
    return calibration(network, engine, seeds, steps, ks, label, progress).schedule


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """The network and the machines from the same noise, seed by seed, in two modes (MODES).

    outputs: name -> [S, C, H, W] final images; names "network" (sampled with `steps`), "network-N"
    for each other number of network steps, and the machines that ran their own trajectories (mode
    "own"). means: name -> {step i: [S, C, H, W] posterior mean} for the runs with `steps` steps.
    agreement[net][machine] / r2[net][machine]: per-seed scores of each machine's output against each
    network run (mode "own"). step_agreement[m][i] / step_r2[m][i]: per-seed agreement / r^2 of machine
    m's posterior mean at step i of its own trajectory with the network's at step i of the network's
    (both with `steps` steps; r^2 takes the network's mean as the target).
    network_path_agreement[m][i] / network_path_r2[m][i] (mode "network"): per seed, machine m's
    posterior mean at the network's own x_t of step i (the network's `steps`-step trajectory; same t,
    same k[i]) against the network's posterior mean there; network_path_means[m][i] those machine
    means [S, C, H, W]. Each of these is an empty dict when its mode was not run.
    baselines[net][name]: per-seed agreement of unrelated pictures with that network run (BASELINES:
    another seed's output, a random training image, the nearest training image),
    baseline_index[net][name] the other seed or the image's index; empty when the comparison was
    scored without the training images. options: {machine: its settings} for the machines that
    have some (pca, cfdm), as the engines used them.
    """

    seeds: list[int]
    steps: int
    schedule: list[int]  # k per step of the machines with k (each clamped to its k_limit); [] when none needed one
    network_steps: list[int]
    outputs: dict[str, torch.Tensor]
    means: dict[str, dict[int, torch.Tensor]] = field(repr=False)
    agreement: dict[str, dict[str, list[float]]]
    r2: dict[str, dict[str, list[float]]]
    step_agreement: dict[str, dict[int, list[float]]]
    label: int | None = None
    baselines: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    baseline_index: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    step_r2: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    network_path_agreement: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    network_path_r2: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    network_path_means: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict, repr=False)
    options: dict[str, dict] = field(default_factory=dict)

    @staticmethod
    def network_key(n: int, steps: int) -> str:
        return "network" if n == steps else f"network-{n}"

    @property
    def machines(self) -> list[str]:
        """The machine keys compared, in order (those of either mode)."""
        own = [m for m in self.outputs if not m.startswith("network")]
        return own + [m for m in self.network_path_agreement if m not in own]

    @property
    def modes(self) -> list[str]:
        """The modes run (MODES): "own", "network" or both."""
        ran = {"own": any(not m.startswith("network") for m in self.outputs),
               "network": bool(self.network_path_agreement)}
        return [mode for mode in MODES if ran[mode]]

    def medians(self, metric: str = "agreement") -> dict[str, dict[str, float]]:
        table = self.agreement if metric == "agreement" else self.r2
        return {net: {m: median(v) for m, v in row.items()} for net, row in table.items()}

    def spreads(self, network: str | None = None) -> dict[str, tuple[float, float, float]]:
        """{machine or baseline: (lower quartile, median, upper quartile)} of the agreement with one network
        run (default: the main one) over the seeds; machines first, then the baselines."""
        net = network or self.main_network
        rows = {**self.agreement[net], **self.baselines.get(net, {})}
        return {name: spread(values) for name, values in rows.items()}

    def beats(self, a: str = "bbels", b: str = "is", network: str | None = None) -> float:
        """The share of seeds on which machine a agrees better with the network than machine b does."""
        row = self.agreement[network or self.main_network]
        pairs = [(x, y) for x, y in zip(row[a], row[b]) if not (math.isnan(x) or math.isnan(y))]
        return sum(x > y for x, y in pairs) / len(pairs) if pairs else math.nan

    @property
    def main_network(self) -> str:
        """The network run the headline uses: the most steps (the paper's 150 when run)."""
        return self.network_key(max(self.network_steps), self.steps)

    def per_step(self, mode: str = "own", metric: str = "agreement") -> dict[str, dict[int, list[float]]]:
        """{machine: {step: [value per seed]}} of one mode (MODES) and metric (METRICS): step_agreement,
        step_r2, network_path_agreement or network_path_r2."""
        if mode not in MODES:
            raise ElsvizError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
        if metric not in METRICS:
            raise ElsvizError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}.")
        return {("own", "agreement"): self.step_agreement, ("own", "r2"): self.step_r2,
                ("network", "agreement"): self.network_path_agreement,
                ("network", "r2"): self.network_path_r2}[mode, metric]

    def curve(self, machine: str, mode: str = "own", metric: str = "agreement") -> list[tuple[int, float]]:
        """[(step, median over the seeds)] from the noisiest step to step 1: machine's agreement (or r^2) with the
        network along its own trajectory (mode "own") or at the network's own x_t (mode "network"); [] when that
        mode was not run. A machine that was not compared raises ElsvizError."""
        table = self.per_step(mode, metric)
        if machine not in self.machines:
            raise ElsvizError(f"{machine!r} was not compared; this comparison holds {', '.join(self.machines)}.")
        return [(i, median(v)) for i, v in sorted(table.get(machine, {}).items(), reverse=True)]

    def step_medians(self, machine: str = "bbels") -> list[tuple[int, float]]:
        """[(step, median agreement of the posterior means)] from the noisiest step to step 1 (mode "own")."""
        return [(i, median(v)) for i, v in sorted(self.step_agreement.get(machine, {}).items(), reverse=True)]

    def summary(self) -> str:
        """One line: the headline figures."""
        med = self.medians()
        parts = []
        own = [m for m in self.machines if m in self.agreement.get(self.main_network, {})]
        for n in sorted(self.network_steps, reverse=True) if own else ():
            row = med[self.network_key(n, self.steps)]
            parts.append(f"network {n} steps: " + ", ".join(f"{NAMES[m]} {row[m]:.3f}" for m in own))
        path = [m for m in self.machines if self.network_path_agreement.get(m)]
        if path:
            last = {m: median(self.network_path_agreement[m][min(self.network_path_agreement[m])]) for m in path}
            parts.append(f"on the {self.steps}-step network's own x_t, step 1: "
                         + ", ".join(f"{NAMES[m]} {v:.3f}" for m, v in last.items()))
        both = {"bbels", "is"} <= set(own)
        share = self.beats() if both else math.nan
        beat = "" if math.isnan(share) else \
            f"; bbELS beats IS on {share:.0%} of seeds ({max(self.network_steps)}-step network)"
        base = self.baselines.get(self.main_network, {})
        scale = "" if not base else "; for scale, the network against " + ", ".join(
            f"{_baseline_name(b)} {median(v):.3f}" for b, v in base.items() if not math.isnan(median(v)))
        n = len(self.seeds)
        return f"{n} seed{'s' if n > 1 else ''}, median agreement: " + "; ".join(parts) + beat + scale

    def table(self) -> list[dict]:
        """One row per seed: seed; agreement_<net>_<machine> and r2_<net>_<machine> (the outputs); the
        baselines; then per machine and step i, step_agreement_<m>_<i> and step_r2_<m>_<i> (mode "own") and
        network_path_agreement_<m>_<i> and network_path_r2_<m>_<i> (mode "network")."""
        steps = (("step_agreement", self.step_agreement), ("step_r2", self.step_r2),
                 ("network_path_agreement", self.network_path_agreement), ("network_path_r2", self.network_path_r2))
        rows = []
        for s, seed in enumerate(self.seeds):
            row = {"seed": seed}
            for metric, tab in (("agreement", self.agreement), ("r2", self.r2)):
                for net, per in tab.items():
                    for m, vals in per.items():
                        row[f"{metric}_{net}_{m}"] = round(vals[s], 4)
            for net, per in self.baselines.items():
                for name, vals in per.items():
                    row[f"agreement_{net}_{name}"] = _none(round(vals[s], 4))
                    row[f"{'seed' if name == 'other-seed' else 'image'}_{net}_{name}"] = \
                        self.baseline_index[net][name][s]
            for name, tab in steps:
                for m, per in tab.items():
                    for i, vals in sorted(per.items(), reverse=True):
                        row[f"{name}_{m}_{i}"] = _none(round(vals[s], 4))
            rows.append(row)
        return rows

    def to_json(self) -> dict:
        med, med_r2 = self.medians(), self.medians("r2")

        def curves(mode, metric):
            return {m: {i: _none(v) for i, v in self.curve(m, mode, metric)} for m in self.per_step(mode, metric)}

        def final(table):  # step 1: the end of the network's trajectory
            return {m: _none(median(per[min(per)])) for m, per in table.items() if per}

        return {"seeds": self.seeds, "steps": self.steps, "schedule": self.schedule,
                "network_steps": self.network_steps, "machines": self.machines,
                "machine_names": {m: NAMES[m] for m in self.machines}, "modes": self.modes, "options": self.options,
                "label": self.label, "median_agreement": med, "median_r2": med_r2,
                "bbels_beats_is": {net: self.beats(network=net) for net in self.agreement
                                   if {"bbels", "is"} <= set(self.agreement[net])},
                "step_agreement_median": {m: dict(self.step_medians(m)) for m in self.step_agreement},
                "step_r2_median": curves("own", "r2"),
                "network_path_agreement_median": curves("network", "agreement"),
                "network_path_r2_median": curves("network", "r2"),
                "network_path_final_median": {"agreement": final(self.network_path_agreement),
                                              "r2": final(self.network_path_r2)},
                "baselines": dict(BASELINES),
                "median_baselines": {net: {b: _none(median(v)) for b, v in per.items()}
                                     for net, per in self.baselines.items()},
                "quartiles": {net: {name: [_none(q) for q in qs] for name, qs in self.spreads(net).items()}
                              for net in self.agreement},
                "per_seed": self.table(), "summary": self.summary()}


def _none(v: float):
    """NaN as None (JSON has no NaN)."""
    return None if isinstance(v, float) and math.isnan(v) else v


def on_network_path(engine, trajectory: Trajectory, ks=None, label: int | None = None,
                    callback: Callable | None = None) -> dict[int, torch.Tensor]:
    """Mode "network": the machine's posterior mean at the network's own x_t of every step of a network
    trajectory (same t; ks[i] at step i, None for a machine without k): {step i: [B, C, H, W] on the
    CPU}. One engine.denoise per step on the whole batch; the network is not run again (its frames hold
    x_t). callback(frame) after each step."""
    out = {}
    for f in trajectory.frames:
        out[f.i] = engine.denoise(f.x.to(engine.device), f.t, None if ks is None else ks[f.i], label=label).mean.detach().cpu()
        if callback is not None:
            callback(f)
    return out


def compare(network, train=None, seeds=range(32), k=None, *, steps: int = 20, network_steps=(20, 150),
            machines=MACHINE_ORDER, modes=("own", "network"), options: dict | None = None,
            engines: dict | None = None, label: int | None = None, device="cpu",
            progress: Callable[[str, int, int], None] | None = None) -> Comparison:
    """Run the network and the machines from the same noise for every seed and score them.

    train: the ImageSet the network was trained on (default: network.train.load()). machines: keys,
    "all" (every machine, elsviz.machines order) or a comma list (machine_keys). k: the schedule of the
    machines that take a window (default: the network's calibrated one; or an int, a preset, a list),
    clamped per machine to its k_limit (ELS's and PSPC's windows fit inside the images); machines
    without k ignore it, and a comparison of such machines alone needs none. The machines take `steps`
    steps; the network is sampled with each of `network_steps` (the paper: 150 for the network, 20
    for the machine). modes (MODES): "own" runs each machine's own trajectory from the same noise;
    "network" gives each machine the network's own x_t at every step of its `steps`-step trajectory
    (one denoise per step per machine, on all seeds at once). options: {machine: {setting: value}}
    given to its Engine (Engine(train, "pca", threshold=0.05)). engines: machine -> Engine to reuse.
    progress(what, done, total) after each step of each run.
    """
    from ..engine import Engine

    seeds = _seeds(seeds)
    machines = machine_keys(machines)
    modes = mode_keys(modes)
    options = _options(options, machines)
    engines = {m: e for m, e in (engines or {}).items() if e is not None}
    if train is None:
        given = [engines[m] for m in machines if m in engines]
        train = given[0].train if given else network.train.load()
    _check_pair(network, train)
    hw = tuple(train.shape[1:])
    local = [m for m in machines if BY_KEY[m].local]
    ks = _schedule(network, k, steps, machines) if local or k is not None else None
    network_steps = sorted({int(n) for n in network_steps} | {steps})
    x0 = noise(network, seeds, train.shape)  # the same noise for every run: sample(..., seed=s) draws it too

    def watch(what, total):
        if progress is None:
            return None
        return lambda frame: progress(what, total - frame.i, total - 1)

    def engine_for(m):
        if m not in engines:
            return Engine(train, m, device, **options.get(m, {}))
        engine = engines[m]
        if engine.machine != m:
            raise ElsvizError(f"engines[{m!r}] is a {NAMES[engine.machine]} engine; give an Engine(train, {m!r}).")
        if m in options and engine.options != options[m]:
            raise ElsvizError(f"engines[{m!r}] has the settings {engine.options}, options ask for {options[m]}: "
                              "give one or the other.")
        return engine

    trajs: dict[str, Trajectory] = {}
    for n in network_steps:
        key = Comparison.network_key(n, steps)
        trajs[key] = sample(network, x=x0.clone(), steps=n, label=label, callback=watch(f"network, {n} steps", n))
    used, path = {}, {}
    for m in machines:
        engine = used[m] = engine_for(m)
        mk = [min(v, k_limit(m, hw)) for v in ks] if BY_KEY[m].local else None
        if "own" in modes:  # sample needs some k; a machine without k ignores it
            trajs[m] = sample(engine, x=x0.clone().to(engine.device), steps=steps, k=1 if mk is None else mk,
                              label=label, callback=watch(NAMES[m], steps))
        if "network" in modes:
            path[m] = on_network_path(engine, trajs["network"], mk, label,
                                      watch(f"{NAMES[m]} on the network's x_t", steps))

    outputs = {name: t.final.detach().cpu() for name, t in trajs.items()}
    means = {name: {f.i: f.mean.detach().cpu() for f in t.frames} for name, t in trajs.items() if t.steps == steps}
    settings = {m: dict(e.options) for m, e in used.items() if e.options}
    return score(seeds, steps, ks or [], network_steps, outputs, means, label, train=train, network_path=path,
                 options=settings)


def score(seeds, steps: int, schedule, network_steps, outputs: dict, means: dict,
          label: int | None = None, *, train=None, network_path: dict | None = None,
          options: dict | None = None) -> Comparison:
    """A Comparison from finished runs: outputs {name: [S, C, H, W]} (names as in Comparison) and the
    posterior means {name: {step: [S, C, H, W]}} of the `steps`-step runs. Machines are the names
    that do not start with "network". network_path: {machine: {step: [S, C, H, W]}}, the machines'
    means at the network's own x_t (on_network_path), scored against means["network"]. train: the
    training set (an ImageSet, or its images [N, C, H, W]) for the baselines; without it there are none.
    options: the machines' settings, recorded."""
    seeds = list(seeds)
    network_steps = sorted(int(n) for n in network_steps)
    machines = [m for m in outputs if not m.startswith("network")]
    n = len(seeds)
    agree: dict = {}
    fit: dict = {}
    for ns in network_steps:
        net = Comparison.network_key(ns, steps)
        agree[net] = {m: [agreement(outputs[net][s], outputs[m][s]) for s in range(n)] for m in machines}
        fit[net] = {m: [r2(outputs[net][s], outputs[m][s]) for s in range(n)] for m in machines}
    net_means = means.get(Comparison.network_key(steps, steps), {})

    def per_step(fn, theirs: dict) -> dict:
        """{step: [fn(network's mean, the machine's) per seed]}, noisiest step first."""
        return {i: [fn(net_means[i][s], theirs[i][s]) for s in range(n)]
                for i in sorted(net_means, reverse=True) if i in theirs}

    step_agree = {m: per_step(agreement, means.get(m, {})) for m in machines}
    step_fit = {m: per_step(r2, means.get(m, {})) for m in machines}
    network_path = dict(network_path or {})
    if network_path and not net_means:
        raise ElsvizError(f"Scoring the machines on the network's path needs the network's posterior means "
                          f"(means['network'] of its {steps}-step run).")
    path_agree = {m: per_step(agreement, per) for m, per in network_path.items()}
    path_fit = {m: per_step(r2, per) for m, per in network_path.items()}
    base, index = {}, {}
    if train is not None:
        images = getattr(train, "images", train)
        for ns in network_steps:
            net = Comparison.network_key(ns, steps)
            base[net], index[net] = baselines(outputs[net], images, seeds)
    return Comparison(seeds, steps, list(schedule), network_steps, outputs, means, agree, fit, step_agree, label,
                      base, index, step_r2=step_fit, network_path_agreement=path_agree, network_path_r2=path_fit,
                      network_path_means=network_path, options=dict(options or {}))
