"""Noise schedule and locality schedules (docs/THEORY.md: "Noise schedule", "Locality schedules").

Time t runs in (0, 1); x_t = a_t * x_0 + b_t * eps with the paper's "legacy cosine" schedule.
"""
from __future__ import annotations

import math

import torch

from .errors import ElsvizError
from .validate import as_float, as_int, is_int

MAX_STEPS = 1000  # the paper uses 20; a run is `steps` calls of the machine

# k[0..19] fitted by the paper to trained networks (32 x 32 images, 20 steps).
PRESETS: dict[str, tuple[int, ...]] = {
    "mnist-resnet": (3, 3, 5, 5, 5, 7, 7, 7, 9, 9, 11, 11, 11, 11, 13, 15, 15, 15, 15, 15),
    "mnist-resnet-circular": (3, 3, 5, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 11, 9, 9, 7, 7, 3, 3),
    "mnist-unet": (3, 3, 3, 5, 5, 7, 7, 7, 9, 9, 9, 11, 13, 15, 17, 21, 23, 23, 25, 27),
    "fashion-resnet": (3, 3, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 13, 13, 13, 15, 15, 15, 17, 17),
    "fashion-unet": (3, 3, 5, 5, 7, 7, 7, 9, 11, 11, 11, 13, 15, 15, 21, 23, 25, 25, 25, 25),
    "cifar10-resnet": (3, 3, 3, 3, 5, 5, 5, 7, 7, 7, 7, 9, 9, 11, 11, 13, 15, 17, 17, 17),
    "cifar10-resnet-circular": (3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15, 15),
    "cifar10-unet": (3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7, 9, 9, 11, 13, 13, 15, 17, 25),
    "celeba-resnet": (3, 3, 3, 5, 5, 5, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 13, 15, 19, 19),
    "celeba-unet": (3, 3, 3, 3, 3, 3, 3, 5, 5, 5, 5, 5, 7, 7, 9, 9, 9, 13, 19, 27),
}

PRESET_NOTES: dict[str, str] = {
    "mnist-resnet": "MNIST, ResNet, zero padding",
    "mnist-resnet-circular": "MNIST, ResNet, circular padding",
    "mnist-unet": "MNIST, UNet, zero padding",
    "fashion-resnet": "FashionMNIST, ResNet, zero padding, conditional",
    "fashion-unet": "FashionMNIST, UNet, zero padding, conditional",
    "cifar10-resnet": "CIFAR-10, ResNet, zero padding, conditional",
    "cifar10-resnet-circular": "CIFAR-10, ResNet, circular padding, conditional",
    "cifar10-unet": "CIFAR-10, UNet, zero padding, conditional",
    "celeba-resnet": "CelebA 32x32, ResNet, zero padding",
    "celeba-unet": "CelebA 32x32, UNet, zero padding",
}


def beta(t: float | torch.Tensor) -> float | torch.Tensor:
    """beta(t) = 1 - cos(t / 1.008 * pi / 2) ** 2 of a number, or elementwise of a tensor of times; beta(0) = 0."""
    cos = torch.cos if isinstance(t, torch.Tensor) else math.cos
    return 1.0 - cos(t / 1.008 * math.pi / 2) ** 2


def alpha_sigma(t: float | torch.Tensor) -> tuple[float, float] | tuple[torch.Tensor, torch.Tensor]:
    """(a_t, b_t) = (sqrt(1 - beta(t)), sqrt(beta(t))) of a number, or elementwise of a tensor of times."""
    bt = beta(t)
    sqrt = torch.sqrt if isinstance(bt, torch.Tensor) else math.sqrt
    return sqrt(1.0 - bt), sqrt(bt)


def check_t(t: float) -> float:
    """The noise level t, a number strictly between 0 and 1."""
    t = as_float("t", t, 0.0, 1.0, open_range=True, hint=" (the noise level; e.g. t=0.5)")
    if beta(t) <= 0.0:  # t below ~1e-8: the schedule has no noise left (b_t = 0), the score is undefined
        raise ElsvizError(f"t = {t:g} is too small: the noise level b_t is 0 there. Use t >= 1e-6 (a run's last step "
                          "is t = 1/steps).")
    return t


def check_k(k) -> int:
    """An odd window size k >= 1."""
    if not is_int(k):
        raise ElsvizError(f"k must be an odd integer >= 1 (the window size), got {k!r}.")
    k = int(k)
    if k < 1 or k % 2 == 0:
        raise ElsvizError(f"k must be an odd integer >= 1 (the window size), got {k}. Try k={max(1, k + 1 if k > 0 else 1)}.")
    return k


def locality_schedule(k, steps: int) -> list[int]:
    """k[0..steps-1] from an int, a list of `steps` ints, or a preset name.

    A preset has 20 entries (fitted for 20 steps); for another number of steps it is resampled
    by nearest time: k[i] = preset[round(i * 19 / (steps - 1))].
    """
    steps = as_int("steps", steps, 2, MAX_STEPS, " (the paper uses 20)")
    if isinstance(k, str):
        if k not in PRESETS:
            raise ElsvizError(f"Unknown locality preset {k!r}. Known presets: {', '.join(PRESETS)}.")
        p = PRESETS[k]
        if steps == len(p):
            return list(p)
        return [p[round(i * (len(p) - 1) / (steps - 1))] for i in range(steps)]
    if is_int(k):
        return [check_k(k)] * steps
    if isinstance(k, (list, tuple, range)) or hasattr(k, "tolist") and getattr(k, "ndim", 0) == 1:
        ks = list(k.tolist() if hasattr(k, "tolist") else k)
        if len(ks) != steps:
            raise ElsvizError(f"A locality schedule needs one k per step: got {len(ks)} values for steps={steps}.")
        return [check_k(v) for v in ks]
    raise ElsvizError(f"k must be an odd integer (the window size), a list of {steps} odd integers (one per step) "
                      f"or a preset name such as 'mnist-resnet'; got {k!r} ({type(k).__name__}).")
