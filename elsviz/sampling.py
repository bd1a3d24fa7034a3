"""The reverse process (deterministic DDIM, as in the paper's code): one small function over a denoiser.

The denoiser is anything with `denoise(x, t, k, label) -> posterior` whose result has `.mean`
(an ELS Engine, or a wrapped trained network); provenance fields are recorded when present.
Whoever watches (the app, the command line) gets every step through `callback(frame)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .errors import ElsvizError
from .schedule import alpha_sigma, beta, locality_schedule
from .validate import as_callback, as_int, as_label, as_seed

MAX_SIDE = 1024  # largest output height or width
MAX_BATCH = 1024

_PROVENANCE = ("source_index", "source_pos", "source_weight", "source_count", "entropy")


@dataclass
class Frame:
    """One step i of the reverse process (t = i / steps, window k = k[i]).

    x: [B, C, H, W] the input of the step (the noisy image x_t); mean: the posterior mean at t;
    the provenance fields as in Posterior (None for a denoiser without provenance).
    """

    i: int
    t: float
    k: int | None
    x: torch.Tensor
    mean: torch.Tensor
    source_index: torch.Tensor | None = None
    source_pos: torch.Tensor | None = None
    source_weight: torch.Tensor | None = None
    source_count: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


@dataclass
class Trajectory:
    """A finished run. frames[0] is step steps-1 (most noise), frames[-1] step 1."""

    frames: list[Frame]
    final: torch.Tensor  # [B, C, H, W] the output: the posterior mean of step 1
    x_init: torch.Tensor  # [B, C, H, W] the starting noise
    steps: int
    ks: list[int]  # k[0..steps-1]; k[0] is never used
    label: int | None = None
    seed: int | None = None
    denoiser: object = field(default=None, repr=False)

    def frame(self, i: int) -> Frame:
        """The frame of step i."""
        for f in self.frames:
            if f.i == i:
                return f
        raise ElsvizError(f"This run has no step {i}; steps run from {self.steps - 1} down to 1.")


def start_noise(denoiser, seed: int, shape) -> torch.Tensor:
    device = getattr(denoiser, "device", torch.device("cpu"))
    gen = torch.Generator(device=device).manual_seed(int(seed))
    return torch.randn(shape, generator=gen, device=device)


def _default_shape(denoiser, shape):
    if shape is None:
        train = getattr(denoiser, "train", None)
        if train is None:
            raise ElsvizError("Give x or shape: this denoiser has no training set to take the image size from.")
        return (1, *train.shape)
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) not in (3, 4):
        raise ElsvizError(f"shape must be (C, H, W) or (B, C, H, W), a tuple of positive integers; got {shape!r}.")
    shape = tuple(shape) if len(shape) == 4 else (1, *shape)
    limits = (("batch size", MAX_BATCH), ("channels", 3), ("height", MAX_SIDE), ("width", MAX_SIDE))
    return tuple(as_int(f"shape's {what}", v, 1, hi) for v, (what, hi) in zip(shape, limits))


def _run(denoiser, x, steps, ks, label, callback, start):
    """Steps i = start .. 1 from x (the input of step `start`); returns the frames and the output."""
    frames = []
    for i in range(start, 0, -1):
        t, t_next = i / steps, (i - 1) / steps
        post = denoiser.denoise(x, t, ks[i], label=label)
        frame = Frame(i, t, ks[i], x, post.mean, **{f: getattr(post, f, None) for f in _PROVENANCE})
        frames.append(frame)
        if callback is not None:
            callback(frame)
        if i == 1:
            x = post.mean  # beta(0) = 0: the output is the posterior mean
        else:
            a_t, b_t = alpha_sigma(t)
            eps = (x - a_t * post.mean) / b_t  # = -b_t * score
            ratio = math.sqrt((1 - beta(t_next)) / (1 - beta(t)))
            x = ratio * x + (math.sqrt(beta(t_next)) - ratio * b_t) * eps
    return frames, x


def sample(denoiser, x: torch.Tensor | None = None, steps: int = 20, k=5, label: int | None = None,
           callback=None, *, seed: int | None = None, shape=None) -> Trajectory:
    """Run the reverse process of docs/THEORY.md from x (or from x ~ N(0, I) drawn with `seed`).

    k: an odd int, a list of `steps` ints (k[i] used at step i) or a preset name.
    shape: (B, C, H, W) or (C, H, W) of the noise; defaults to one training-sized image.
    """
    if not callable(getattr(denoiser, "denoise", None)):
        raise ElsvizError(f"sample() needs a denoiser (an Engine, or anything with .denoise(x, t, k, label)), "
                          f"got {type(denoiser).__name__}.")
    ks = locality_schedule(k, steps)
    label = as_label(label)
    callback = as_callback(callback)
    seed = None if seed is None else as_seed(seed)
    if x is None:
        seed = 0 if seed is None else seed
        x = start_noise(denoiser, seed, _default_shape(denoiser, shape))
    elif not isinstance(x, torch.Tensor):
        raise ElsvizError(f"x must be a torch tensor [B, C, H, W], got {type(x).__name__}.")
    elif x.is_complex() or x.ndim not in (3, 4) or x.numel() == 0:
        raise ElsvizError(f"x must be a real tensor [B, C, H, W] (or [C, H, W]) of noise, got {x.dtype} of shape "
                          f"{tuple(x.shape)}.")
    elif x.ndim == 3:
        x = x.unsqueeze(0)
    device = getattr(denoiser, "device", x.device)
    x = x.to(device, torch.float32)
    frames, final = _run(denoiser, x, steps, ks, label, callback, steps - 1)
    return Trajectory(frames, final, x, steps, ks, label, seed, denoiser)


def branch(traj: Trajectory, at_step: int, k=None, callback=None, denoiser=None) -> Trajectory:
    """Keep traj's frames before step `at_step` and finish from there with another schedule k.

    The new run starts from the recorded input x of step at_step; k[i] for i <= at_step comes
    from the new schedule (an int, a list of `steps` ints or a preset), the rest from traj.
    """
    if not isinstance(traj, Trajectory):
        raise ElsvizError(f"branch() continues a Trajectory returned by sample(), got {type(traj).__name__}.")
    callback = as_callback(callback)
    denoiser = denoiser or traj.denoiser
    if denoiser is not None and not callable(getattr(denoiser, "denoise", None)):
        raise ElsvizError(f"denoiser must be an Engine (or have .denoise(x, t, k, label)), got {type(denoiser).__name__}.")
    if denoiser is None:
        raise ElsvizError("This trajectory does not know its denoiser; pass denoiser=... to branch().")
    if isinstance(at_step, bool) or not isinstance(at_step, int) or not (1 <= at_step <= traj.steps - 1):
        raise ElsvizError(f"at_step must be a step of the run, 1 .. {traj.steps - 1}, got {at_step!r}.")
    new_ks = locality_schedule(traj.ks if k is None else k, traj.steps)
    ks = [new_ks[i] if i <= at_step else traj.ks[i] for i in range(traj.steps)]
    kept = [f for f in traj.frames if f.i > at_step]
    start = traj.frame(at_step).x
    frames, final = _run(denoiser, start, traj.steps, ks, traj.label, callback, at_step)
    return replace(traj, frames=kept + frames, final=final, ks=ks, denoiser=denoiser)
