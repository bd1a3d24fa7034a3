"""Theories side by side, without Streamlit: the same noise through every machine and a trained network.

    run = TheoryRun(network_run, runs, means)   # elsviz/ui/theories.py builds it from cached runs
    run.curve("bbels", mode="network", metric="r2")    # [(step, value)] from the noisiest step to step 1
    pixel_sources(run, (8, 8))                  # what each retrieving machine copied at one pixel

Two ways to hold a machine against the network, step by step (the two *modes*):
- "own": the machine's posterior mean along its own trajectory, against the network's along its
  own, both from the same noise (they part as they go);
- "network": the machine's posterior mean of the network's own x_t at each step, against the
  network's (the same input at every step: how far the two denoisers differ where the network goes).
Both with the paper's agreement (centred, unit-length dot product) and r^2 (elsviz.analysis.compare).

Every sentence here is made from the numbers it states (as elsviz.analysis.claims'): the source of a
pixel, and the lesson's three claims (linear blurs, ideal memorises, local creates).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..analysis import claims
from ..analysis.compare import agreement, r2
from ..machines import BY_KEY, MACHINE_NAMES, PAPER_MACHINES, THEORIES, k_limit
from ..schedule import locality_schedule
from .runs import RunSpec

MACHINES: tuple[str, ...] = (*PAPER_MACHINES, *THEORIES)  # the nine, Kamb & Ganguli's four first
MODES = {"own": "own trajectory", "network": "on the network's x_t"}
METRICS = {"agreement": "agreement", "r2": "r²"}
NO_WINDOW_K = 5  # the k a RunSpec of a machine without a window carries (it reads none; the lesson's IS run has it)
FALLBACK_NETWORK = "digits-resnet"  # bundled, 16x16 digits: the network when none was trained on the sidebar's set
GREY = 0.5  # a pixel whose value lies within this of mid grey (|v| < 0.5 on the -1..1 scale) is neither ink nor paper

# What a step of each rival theory costs, in seconds of one thread of this project's 2-core CPU (AMD EPYC;
# the engine's own cost model, elsviz.app.runs.COSTS, covers Kamb & Ganguli's four). Measured 2026-12 with
# one torch thread, the best of 5 calls at t = 0.5 (load average 7 from other work), on the digits (1,797 of
# 16x16), MNIST (1,000 of 16x16 and of 28x28) and the digits at 8x8: per unit of the work named, nearest
# 0.5-4.5e-9 per N*D, wiener 1-7e-8 per D^2 (overheads: a step took 0.3-0.6 ms), pca 0.6-4e-10 per N*D^2,
# pspc 1.8-3.2e-9 per N*H*W*(C + 2k), cfdm 0.6-2.7e-10 per 2*samples*N*D; the largest is kept, so a
# larger set errs long. Once per set: wiener's and pca's covariance and eigendecomposition (0.33 s at
# D = 784: N*D^2 + D^3 at 3e-10); pca's mask at each new t (D^3 at 5e-10: 0.08 s at D = 784).
THEORY_COSTS = {"step": 6e-4, "nearest": 4.5e-9, "wiener": 7e-8, "pca": 4e-10, "pspc": 3.2e-9, "cfdm": 2.7e-10,
                "gaussian": 3e-10, "mask": 5e-10}
# A network's step: its parameters times the pixels, in multiply-adds (a convolution's weights meet every
# pixel; a UNet's downsampled layers meet fewer, so it errs long): the bundled digits ResNet (0.20 M
# parameters, 16x16) took 7 ms a step, 1.4e-10 s per multiply-add (one thread, load average 7).
NETWORK_MADD_S = 1.4e-10


# -- what runs ------------------------------------------------------------------------------------
def machine_k(machine: str, k, steps: int, train_hw: tuple[int, int]):
    """The k a machine's RunSpec takes from the sidebar's k (an int, a preset name or a tuple of ks):
    clamped to what the machine allows here (ELS's windows and PSPC's crops lie inside the image);
    NO_WINDOW_K for a machine without a window."""
    if not BY_KEY[machine].local:
        return NO_WINDOW_K
    lim = k_limit(machine, tuple(train_hw))
    if isinstance(k, int):
        return min(k, lim)
    ks = locality_schedule(list(k) if isinstance(k, tuple) else k, steps)
    if isinstance(k, str) and max(ks[1:]) <= lim:
        return k  # the preset by name (shared with the other pages' runs of it)
    return tuple(min(v, lim) for v in ks)


def specs(machines, k, steps: int, seed: int, train_hw) -> dict[str, RunSpec]:
    """Each machine's RunSpec from the same noise (seed), at the training size, without a class."""
    return {m: RunSpec(machine=m, k=machine_k(m, k, steps, train_hw), steps=steps, seed=seed) for m in machines}


@dataclass
class TheoryRun:
    """One seed through the network and the machines: the network's run, each machine's own run and its
    posterior means on the network's x_t, with the scores of both modes.

    runs: machine -> Trajectory from the same noise as network; means_on_network: machine -> {step: mean}."""

    network: object  # Trajectory of the network
    runs: dict
    means_on_network: dict
    network_name: str = "network"
    _curves: dict = field(default_factory=dict, repr=False)

    @property
    def machines(self) -> list[str]:
        return list(self.runs)

    @property
    def ks(self) -> dict:
        """machine -> k[0..steps-1] it used, None for a machine without a window."""
        return {m: list(t.ks) if BY_KEY[m].local else None for m, t in self.runs.items()}

    @property
    def seed(self):
        return self.network.seed

    @property
    def steps(self) -> int:
        return self.network.steps

    def curve(self, machine: str, mode: str = "own", metric: str = "agreement") -> list[tuple[int, float]]:
        """[(step, value)] from the noisiest step to step 1: the machine's posterior mean against the
        network's, along the machine's own trajectory (mode "own") or on the network's x_t ("network");
        metric "agreement" or "r2" (r^2 of the machine's mean as a prediction of the network's)."""
        key = (machine, mode, metric)
        if key not in self._curves:
            if mode not in MODES or metric not in METRICS:
                raise ValueError(f"mode must be one of {list(MODES)} and metric one of {list(METRICS)}")
            score = agreement if metric == "agreement" else r2  # r2(target: the network, prediction)
            net = {f.i: f.mean.detach().cpu() for f in self.network.frames}
            mine = ({f.i: f.mean.detach().cpu() for f in self.runs[machine].frames} if mode == "own"
                    else self.means_on_network[machine])
            self._curves[key] = [(i, score(net[i], mine[i])) for i in sorted(net, reverse=True) if i in mine]
        return self._curves[key]

    def final(self, machine: str, metric: str = "agreement") -> float:
        """The machine's output against the network's output (both the posterior mean of step 1)."""
        net, out = self.network.final.detach().cpu(), self.runs[machine].final.detach().cpu()
        return agreement(net, out) if metric == "agreement" else r2(net, out)

    def table(self) -> list[dict]:
        """One row per machine and step: agreement and r^2 in both modes (NaN where a picture is constant)."""
        rows, ks = [], self.ks
        for m in self.machines:
            cols = {(mode, metric): dict(self.curve(m, mode, metric)) for mode in MODES for metric in METRICS}
            for i, _ in self.curve(m):
                row = {"machine": m, "name": MACHINE_NAMES[m], "step": i, "t": round(i / self.steps, 4),
                       "k": None if ks[m] is None else ks[m][i]}
                for (mode, metric), vals in cols.items():
                    row[f"{metric}_{mode}"] = round(vals.get(i, math.nan), 6)
                rows.append(row)
        return rows

    def to_json(self) -> dict:
        """The curves and the finals, by machine, for a download."""
        return {
            "seed": self.seed, "steps": self.steps, "network": self.network_name, "machines": self.machines,
            "modes": dict(MODES),
            "final": {m: {metric: self.final(m, metric) for metric in METRICS} for m in self.machines},
            "curves": {m: {mode: {metric: [[i, v] for i, v in self.curve(m, mode, metric)] for metric in METRICS}
                           for mode in MODES} for m in self.machines},
            "k": self.ks,
        }


# -- how long ------------------------------------------------------------------------------------
def theory_seconds(machine: str, n: int, shape, ks: list[int], options: dict | None = None, *,
                   new_set: bool = True) -> float:
    """Seconds of one thread that a rival theory's steps at these k take (THEORY_COSTS): n training images
    of shape (C, H, W); new_set: its covariance is not computed yet (wiener, pca)."""
    c, h, w = shape
    d = c * h * w
    options = options or {}
    cost = THEORY_COSTS
    once = cost["gaussian"] * (n * d * d + d ** 3) if machine in ("wiener", "pca") and new_set else 0.0
    per = {"nearest": lambda k: cost["nearest"] * n * d,
           "wiener": lambda k: cost["wiener"] * d * d,
           "pca": lambda k: cost["pca"] * n * d * d + cost["mask"] * d ** 3,  # a mask per new t
           "pspc": lambda k: cost["pspc"] * n * h * w * (c + 2 * k),
           "cfdm": lambda k: cost["cfdm"] * 2 * int(options.get("samples", 10)) * n * d}[machine]
    return once + sum(cost["step"] + per(int(k)) for k in ks)


def network_seconds(n_parameters: int, shape, steps: int) -> float:
    """Seconds of one thread a network's run of `steps` steps takes (NETWORK_MADD_S)."""
    _, h, w = shape
    return NETWORK_MADD_S * n_parameters * h * w * max(steps - 1, 0)


# -- what each machine copied at a pixel ------------------------------------------------------------
@dataclass(frozen=True)
class PixelSource:
    """What one machine's output at a pixel comes from (its last step's provenance).

    image: the training image of its heaviest key, -1 for a machine that copies nothing (wiener);
    pos: that key's centre (row, col) in the image; window: k of a k x k patch or crop, None where the
    key is a whole image (IS, nearest, pca, cfdm); weight: that key's weight (NaN for none); count:
    identical keys sharing it (0 for none)."""

    machine: str
    image: int
    pos: tuple[int, int]
    window: int | None
    weight: float
    count: int
    entropy: float

    @property
    def copies(self) -> bool:
        return self.image >= 0 and self.count > 0 and self.weight == self.weight


WHOLE = ("is", "nearest", "pca", "cfdm")  # machines whose key is a whole training image


def pixel_sources(run: TheoryRun, pixel: tuple[int, int], machines=None) -> list[PixelSource]:
    """Each machine's source at pixel (row, col) of its output (the frame of step 1), in run order."""
    r, c = (int(v) for v in pixel)
    out = []
    for m in machines or run.machines:
        f = run.runs[m].frames[-1]
        window = None if m in WHOLE else int(f.k)
        if f.source_index is None or not BY_KEY[m].retrieves:
            out.append(PixelSource(m, -1, (-1, -1), window, math.nan, 0, math.nan))
            continue
        out.append(PixelSource(m, int(f.source_index[0, r, c]), tuple(int(v) for v in f.source_pos[0, r, c]),
                               window, float(f.source_weight[0, r, c]), int(f.source_count[0, r, c]),
                               float(f.entropy[0, r, c])))
    return out


def source_sentence(src: PixelSource, noun: str = "image") -> str:
    """One sentence: where a machine's pixel comes from, with the numbers of its provenance."""
    name = MACHINE_NAMES[src.machine]
    if not src.copies:
        return (f"**{name}** copies nothing: its answer is a linear filter of the noisy image, so it names no "
                f"training {noun}." if src.machine == "wiener" else
                f"**{name}** names no training {noun} at this pixel.")
    weight = f"weight {claims.amount(src.weight)}"
    if src.count > 1:
        weight += f" ({claims.amount(min(1.0, src.weight * src.count))} with its {src.count - 1:,} identical " \
                  f"{'copy' if src.count == 2 else 'copies'})"
    if src.window is None:
        what = f"the whole training {noun} **#{src.image}**"
        if src.machine == "pca":
            what += " (matched on the pixels its mask keeps)"
    else:
        kind = "crop" if src.machine == "pspc" else "patch"
        what = f"the {src.window}x{src.window} {kind} centred at ({src.pos[0]}, {src.pos[1]}) of training {noun} " \
               f"**#{src.image}**"
    return f"**{name}** weighs most {what}: {weight}."


def principal_component(images: torch.Tensor) -> torch.Tensor:
    """The training set's first principal component [C, H, W] (the eigenvector of its covariance with
    the largest eigenvalue), scaled so that its largest entry is 1 and its sum is not negative: what
    the Wiener filter keeps most of, since it copies nothing."""
    from ..engine.theories import gaussian_model

    flat = images.detach().flatten(1).cpu().float()
    _, _, vecs = gaussian_model(flat, 1 << 22)
    v = vecs[:, -1]
    v = v / v.abs().max().clamp_min(1e-12)
    if float(v.sum()) < 0:
        v = -v
    return v.float().view(images.shape[1:])


# -- the lesson: linear blurs, ideal memorises, local creates --------------------------------------
LESSON = (("wiener", "linear"), ("is", "ideal"), ("bbels", "local"), ("els", "local"))


def grey_share(img: torch.Tensor) -> float:
    """The share of an image's pixels (all channels) within GREY of mid grey: neither ink nor paper."""
    return float((img.detach().float().cpu().abs() < GREY).float().mean())


def lesson_claims(images: torch.Tensor, outputs: dict, *, noun: str = "image",
                  typical: float | None = None) -> dict[str, claims.Claim]:
    """The lesson's sentence for each of wiener (linear: blurs), is (ideal: memorises), bbels and els
    (local: creates) from their outputs [C, H, W] from the same noise, each true of the numbers:

    wiener: its share of in-between grey pixels (grey_share) against the training images' mean share
            (kind "blurs" when larger, else "sharp"), and the closest training image's distance;
    is:     a copy of training image #n (claims.novelty_claim: within COPY_RMS) or not yet ("unsettled");
    bbels, els: new (not within COPY_RMS of any training image: "creates") or a copy ("copy").
    numbers: novelty_claim's (nearest, distance, typical), plus grey and train_grey for wiener."""
    typ = claims.typical_distance(images) if typical is None else typical
    nouns = claims.plural(noun)
    out = {}
    for m, _ in LESSON:
        if m not in outputs:
            continue
        name = MACHINE_NAMES[m]
        nov = claims.novelty_claim(images, outputs[m], noun=noun, typical=typ, who=f"{name}'s output")
        n = dict(nov.numbers)
        d, idx = claims.amount(n["distance"]), n["nearest"]
        if m == "wiener":
            grey, train_grey = grey_share(outputs[m]), grey_share(images)
            n.update(grey=grey, train_grey=train_grey)
            blurs = grey > train_grey
            grey_words = (f"**{claims.percent(grey)}** of its pixels are in-between greys, neither ink nor paper "
                          f"(within {GREY} of mid grey on the -1..1 scale), against {claims.percent(train_grey)} of "
                          f"the training {nouns}' pixels")
            copy_words = (f"it lands on training {noun} #{idx} (RMS distance {d})" if nov.kind == "copy" else
                          f"the closest training {noun}, #{idx}, is {d} away (RMS on the -1..1 scale)")
            text = (f"**{name}** (linear: the set's mean and covariance alone) names no training {noun}: "
                    f"{grey_words}{': it blurs' if blurs else ', so here it is no blurrier than they are'}; "
                    f"{copy_words}.")
            out[m] = claims.Claim("blurs" if blurs else "sharp", text, n)
        elif m == "is":
            if nov.kind == "copy":
                text = (f"**{name}** (ideal: assumes nothing) memorises: its output is a copy of training {noun} "
                        f"**#{idx}** (RMS distance {d} on the -1..1 scale; a copy lies within {claims.COPY_RMS}).")
                kind = "memorises"
            else:
                text = (f"**{name}** (ideal: assumes nothing) has not settled on one training {noun} in these "
                        f"steps: the closest, #{idx}, is still {d} away (RMS), more than a copy's "
                        f"{claims.COPY_RMS}.")
                kind = "unsettled"
            out[m] = claims.Claim(kind, text, n)
        else:
            if nov.kind == "copy":
                text = (f"**{name}** (local) gives back training {noun} **#{idx}** on this seed (RMS distance {d}): "
                        "its pieces happen to line up into one training image.")
                kind = "copy"
            else:
                like = (f"and reads as a {noun} of this set (as close to one as {claims.TYPICAL_Q:.0%} of the "
                        f"training {nouns} are to their nearest neighbour)" if nov.kind == "new-like" else
                        f"though unlike every training {noun} ({claims.TYPICAL_Q:.0%} of them have another within "
                        f"{claims.amount(n['typical'])})")
                text = (f"**{name}** (local) creates: its output is no training {noun} (the closest, #{idx}, is "
                        f"**{d}** away, RMS, where a copy lies within {claims.COPY_RMS}), {like}.")
                kind = "creates"
            out[m] = claims.Claim(kind, text, n)
    return out
