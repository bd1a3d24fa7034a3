"""The machines' one vocabulary: names, display names, what each assumes, which k and which options
each takes (docs/THEORY.md for Kamb & Ganguli's four, docs/THEORIES.md for the rival theories)."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ElsvizError
from .validate import as_float, as_int, as_seed


@dataclass(frozen=True)
class Option:
    """A machine's own setting, given to Engine as a keyword argument (Engine(train, "pca", threshold=0.05))."""

    name: str
    default: float | int
    help: str  # what it does and which values it takes


@dataclass(frozen=True)
class Machine:
    key: str  # what the API, the CLI and links take
    name: str  # what pages and figures print
    summary: str  # one sentence: how a pixel is computed (API docs, `elsviz --help`)
    assumes: str  # one sentence for a reader: what the machine assumes and what follows
    local: bool  # takes a window size k
    cite: str = "Kamb & Ganguli, ICML 2025 (arXiv 2412.20292)"  # where the machine is defined
    retrieves: bool = True  # names a training image per pixel (source_index); wiener does not
    options: tuple[Option, ...] = ()  # its own settings, with their defaults


_ALL = (
    Machine("is", "IS",
            "Ideal score: the whole image is compared with whole training images; it can only reproduce them.",
            "Ideal score: assumes nothing about images, so it can only give back a whole training image "
            "(it memorises).", False),
    Machine("ls", "LS",
            "Local score: each pixel sees only its k x k neighbourhood, compared with the same place in every "
            "training image.",
            "Local score: each pixel sees only its k x k neighbourhood and copies from the same place in "
            "the training images.", True),
    Machine("els", "ELS",
            "Equivariant local score: each pixel's k x k neighbourhood is matched against every patch of every "
            "training image, wherever it lies.",
            "Equivariant local score: each pixel sees only its k x k neighbourhood and may copy a patch "
            "from anywhere in any training image (edges wrap around).", True),
    Machine("bbels", "bbELS",
            "Boundary-broken ELS: like ELS, but a patch at the border only matches patches at the same place "
            "relative to the border (zero padding).",
            "Boundary-broken ELS: like ELS, but a window that sticks out of the image border may only "
            "copy patches from the same border position, as zero-padded CNNs do.", True),
    # the rival theories (docs/THEORIES.md; elsviz/engine/theories.py computes them)
    Machine("nearest", "Nearest",
            "Nearest training image: the whole training image closest to x (scaled by a_t) is the answer.",
            "Nearest image: assumes the answer is one training image, the closest one; it can only copy "
            "(the small-noise limit of IS).", False, cite="the small-t limit of IS"),
    Machine("wiener", "Wiener",
            "Gaussian model: the training set's mean and covariance alone; a linear filter of x (one "
            "eigendecomposition per set).",
            "Wiener filter: assumes images are Gaussian with the training set's mean and covariance, so "
            "the answer is a linear filter of the noisy image: it blurs and copies nothing.", False,
            cite="Wang & Vastola, arXiv 2311.10892", retrieves=False),
    Machine("pca", "PCA locality",
            "PCA locality: each pixel compares x with whole training images only on the pixels its Wiener "
            "filter at t reaches (a mask from the data's covariance), and averages their pixel.",
            "PCA locality: assumes each pixel sees the neighbourhood that the data's correlations give it "
            "(not a k x k square), and copies from whole training images matched there.", False,
            cite="Lukoianov et al., NeurIPS 2025 (arXiv 2509.09672)",
            options=(Option("threshold", 0.02,
                            "mask threshold from 0 to 1: an entry n enters pixel m's comparison where the Wiener "
                            "filter's row-normalised weight |W[n, m] / W[n, n]| is at least threshold times its "
                            "largest value; 0 compares whole images (IS)"),)),
    Machine("pspc", "PSPC",
            "Patch-set posterior composite: every k x k crop inside the image gets its posterior mean over "
            "the training crops at the same place; a pixel averages the crops that hold it.",
            "Patch mosaic (PSPC): assumes each k x k crop is denoised on its own against the training crops "
            "at the same place, and overlapping crops are averaged.", True,
            cite="Niedoba et al., ICML 2025 (arXiv 2411.19339)"),
    Machine("cfdm", "Smoothed CFDM",
            "Smoothed closed-form denoiser: the ideal posterior mean averaged over `samples` copies of x "
            "perturbed by Gaussian noise of scale `sigma`.",
            "Smoothed ideal score: assumes the ideal (memorising) answer, blurred over small perturbations "
            "of the noisy image, so it can fall between training images.", False,
            cite="Scarvelis et al., arXiv 2310.12395",
            options=(Option("samples", 10, "perturbed copies of x averaged, an integer from 1 to 4,096"),
                     Option("sigma", 0.1, "standard deviation of the perturbations in the units of x_t, from 0 "
                                          "to 10; 0 gives IS"),
                     Option("seed", 0, "seed of the perturbations: the same seed, the same copies at every "
                                       "call (and the same machine)"))),
)
BY_KEY: dict[str, Machine] = {m.key: m for m in _ALL}

# the public mapping (elsviz.MACHINES): machine key -> what it computes
MACHINES: dict[str, str] = {m.key: m.summary for m in _ALL}
MACHINE_NAMES: dict[str, str] = {m.key: m.name for m in _ALL}
MACHINE_SENTENCES: dict[str, str] = {m.key: m.assumes for m in _ALL}
# Kamb & Ganguli's machines, then the rival theories (docs/THEORIES.md)
PAPER_MACHINES: tuple[str, ...] = ("is", "ls", "els", "bbels")
THEORIES: tuple[str, ...] = ("nearest", "wiener", "pca", "pspc", "cfdm")
# machines that work only at the training size (their keys are whole images or fixed places)
TRAINING_SIZE_ONLY: tuple[str, ...] = ("is", "ls", "nearest", "wiener", "pca", "pspc", "cfdm")

MAX_SAMPLES = 4096  # cfdm's copies: each costs a pass over the training set per call
# cfdm's sigma: x_t's entries are of order 1 (a_t x_0 + b_t eps, x_0 in [-1, 1]); at sigma = 10 every
# copy is mostly perturbation, and far beyond float32 logits overflow
MAX_SIGMA = 10.0


def machine_options(machine: str, given: dict) -> dict:
    """The machine's own settings (Option), checked: given {name: value or None}; None takes the
    default. A setting another machine takes raises ElsvizError (it would be ignored silently)."""
    own = {o.name: o for o in BY_KEY[machine].options}
    for name, value in given.items():
        if value is not None and name not in own:
            takers = [m.key for m in _ALL if any(o.name == name for o in m.options)]
            raise ElsvizError(f"{name}= is a setting of the {' and '.join(takers)} machine, not of "
                              f"{BY_KEY[machine].name}; leave it out, or use machine={takers[0]!r}.")
    out = {}
    for name, opt in own.items():
        value = given.get(name)
        if value is None:
            out[name] = opt.default
        elif name == "threshold":
            out[name] = as_float("threshold", value, 0.0, 1.0, hint=" (the pca mask's share of its largest weight; "
                                                                    f"default {opt.default})")
        elif name == "samples":
            out[name] = as_int("samples", value, 1, MAX_SAMPLES, f" (cfdm's perturbed copies; default {opt.default})")
        elif name == "sigma":
            out[name] = as_float("sigma", value, 0.0, MAX_SIGMA, hint=f" (cfdm's perturbation scale in the units of x_t; "
                                                                    f"default {opt.default})")
        elif name == "seed":
            out[name] = as_seed(value)
    return out


def odd_floor(v: int) -> int:
    """The largest odd number <= v."""
    return v if v % 2 else v - 1


def k_limit(machine: str, train_hw: tuple[int, int], out_hw: tuple[int, int] | None = None) -> int | None:
    """The largest k worth offering (odd): ELS needs windows inside the training images; bbELS at
    another size needs k no larger than either size; LS and bbELS at the training size take any k
    but change nothing beyond 2 * max(H, W) - 1 (every window then covers the image); PSPC's crops
    must lie inside the image. Machines without k (IS, nearest, wiener, pca, cfdm): None."""
    h, w = train_hw
    out_hw = out_hw or train_hw
    if not BY_KEY[machine].local:
        return None
    if machine in ("els", "pspc"):
        lim = min(h, w)
    elif machine == "bbels" and tuple(out_hw) != tuple(train_hw):
        lim = min(h, w, *out_hw)
    else:
        lim = 2 * max(h, w) - 1
    return odd_floor(lim)


def check_k_fits(machine: str, k: int, train_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    """Raise ElsvizError where no k x k window of the output can be matched (the hard limits behind
    k_limit: ELS's windows and PSPC's crops must lie inside the training images; bbELS at another
    size must find every boundary pattern of the output in the training images)."""
    h, w = train_hw
    if machine == "els" and k > min(h, w):
        raise ElsvizError(
            f"ELS needs k <= {min(h, w)} (no {k}x{k} window lies inside the {h}x{w} training images); "
            f"pick an odd k <= {odd_floor(min(h, w))} or use bbELS."
        )
    if machine == "pspc" and k > min(h, w):
        raise ElsvizError(
            f"PSPC needs k <= {min(h, w)} (its crops lie inside the image, and no {k}x{k} crop fits in "
            f"{h}x{w}); pick an odd k <= {odd_floor(min(h, w))} (k = the image's side gives IS)."
        )
    if machine == "bbels":
        for name, q, tr in (("height", out_hw[0], h), ("width", out_hw[1], w)):
            if q != tr and k > min(q, tr):
                raise ElsvizError(
                    f"bbELS at an output {name} of {q} (training {tr}) needs k <= {min(q, tr)}, got k={k}: "
                    "some boundary patterns of the output occur nowhere in the training images. "
                    f"Pick an odd k <= {odd_floor(min(q, tr))} or the training size."
                )


def k_sweep(machine: str, train_hw: tuple[int, int], out_hw: tuple[int, int] | None = None) -> list[int]:
    """k = 1, 3, 5, ... up to the image size (the first odd k >= the output's larger side), within k_limit."""
    out_hw = out_hw or train_hw
    lim = k_limit(machine, train_hw, out_hw)
    top = max(out_hw) if max(out_hw) % 2 else max(out_hw) + 1
    if lim is not None:
        top = min(top, lim)
    return list(range(1, top + 1, 2))
